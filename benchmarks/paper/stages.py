"""Resumable stages: each writes its output atomically, then a record under `stages/`."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slimp_cli.core.paths import read_json, write_json


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass
class Stages:
    """Run named stages once: a stage whose record (`stages/<name>.json`) and output exist is
    skipped, unless one of its dependencies was recomputed in this invocation."""

    out: Path
    say: Callable[[str], None]
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    recomputed: set[str] = field(default_factory=set)
    computed_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: {"computed": 0, "skipped": 0})

    def __post_init__(self) -> None:
        (self.out / "stages").mkdir(parents=True, exist_ok=True)

    def record_path(self, name: str) -> Path:
        return self.out / "stages" / f"{_safe(name)}.json"

    def run(self, name: str, output: Path, fn: Callable[[], None], deps: Sequence[str] = ()):
        record = self.record_path(name)
        stale = sorted(set(deps) & self.recomputed)
        if record.is_file() and output.exists() and not stale:
            self._log(name, "skipped", 0.0, output)
            self.counts["skipped"] += 1
            return
        why = f" (input {stale[0]} recomputed)" if stale else ""
        self.say(f"{name}{why}")
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        if not output.exists():
            raise RuntimeError(f"stage {name} finished without writing {output}")
        write_json(
            record,
            {
                "stage": name,
                "output": str(output.relative_to(self.out)),
                "deps": list(deps),
                "seconds": round(seconds, 2),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "invocation": self.invocation,
            },
        )
        self.recomputed.add(name)
        self.computed_seconds += seconds
        self.counts["computed"] += 1
        self._log(name, "computed", seconds, output)

    def total_seconds(self) -> float:
        """Compute time of every finished stage, whichever invocation ran it."""
        return sum(
            float(read_json(p).get("seconds", 0.0)) for p in (self.out / "stages").glob("*.json")
        )

    def _log(self, name: str, action: str, seconds: float, output: Path) -> None:
        line = {
            "invocation": self.invocation,
            "stage": name,
            "action": action,
            "seconds": round(seconds, 2),
            "output": str(output.relative_to(self.out)),
        }
        with open(self.out / "stages.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
