"""What a run records about where it ran, and what may be taken from a saved run.

- `environment(device, world_size)`: the `environment` block of `config.json`: slimp, Python,
  torch, timm, CUDA / cuDNN versions, the GPU name, the git commit of the slimp source when it
  is a git checkout (None otherwise, e.g. an installed wheel), the command line (`sys.argv`),
  the resolved device and the world size (number of processes).
- `check_world_size(saved, world_size, run_dir)`: `--resume` with another number of processes
  would silently change the global batch and the schedule: refused with a one-line reason.
- `EpochSummary`: the run dir's `summary.csv` (timm's per-epoch table), rewritten whole and
  atomically after each epoch; a resumed run keeps the rows up to its checkpoint's epoch, so
  no epoch appears twice. `epoch_line(...)`: the one stderr line printed after each epoch.
- `recipe_from_config(path)`: the model and training options of a saved `config.json` (or of
  the run dir holding it), the base that `pretrain --config FILE` applies its options over.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__
from ..core.errors import SlimpError


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the git checkout holding `where` (default: slimp's own source), with a
    `-dirty` suffix when it has uncommitted changes; None when not a checkout or no git."""
    where = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        run = lambda *args: subprocess.run(  # noqa: E731
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty and commit else commit or None


def environment(device: torch.device | str, world_size: int) -> dict:
    """The `environment` block of a run's config.json (see the module docstring)."""
    import timm

    device = torch.device(device)
    cuda = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    gpu = None
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    record = {
        "slimp": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": cuda,
        "cudnn": cudnn,
        "gpu": gpu,
        "git_commit": git_commit(),
        "argv": list(sys.argv),
        "device": str(device),
        "world_size": int(world_size),
    }
    # Plain JSON types only: the config is copied into checkpoints, which load with
    # weights_only=True (torch.__version__ is a str subclass that such a load refuses).
    return json.loads(json.dumps(record, default=str))


def check_world_size(saved_config: dict | None, world_size: int, run_dir: Path) -> None:
    """SlimpError when a run saved with another number of processes is resumed.

    Each process takes B patients of every step, so the global batch, the steps per epoch and
    the schedule depend on the world size. Runs saved before it was recorded are not checked.
    """
    saved = ((saved_config or {}).get("environment") or {}).get("world_size")
    if saved is not None and int(saved) != int(world_size):
        raise SlimpError(
            f"--resume with {procs(world_size)} but the run in {run_dir} was trained with "
            f"{procs(int(saved))} (the global batch and schedule depend on it); resume with "
            f"{procs(int(saved))}, or start a new run with another --out"
        )


def procs(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


def recipe_from_config(path: str | Path) -> tuple[dict, dict]:
    """(model options, train options) of a saved run's config.json, or of the run dir holding
    it: what `pretrain --config FILE` starts from before the options given on the command line.
    """
    from ..core.paths import read_json
    from ..models.runs import CONFIG, RUN_FORMAT

    path = Path(path)
    if path.is_dir():
        path = path / CONFIG
    if not path.is_file():
        raise SlimpError(f"--config {path}: no such file (give a run's config.json)")
    cfg = read_json(path)
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        raise SlimpError(f"--config {path}: not a slimp run config (format '{RUN_FORMAT}')")
    model, train = cfg.get("model"), cfg.get("train")
    if not isinstance(model, dict) or not isinstance(train, dict):
        raise SlimpError(f"--config {path}: lacks the 'model' and 'train' sections")
    return dict(model), dict(train)


class EpochSummary:
    """summary.csv writer (rank 0): one row per finished epoch (`runs.SUMMARY_FIELDS`).

    The file is small (a row per epoch), so each `add` rewrites it whole under a temporary name
    (`paths.write_text`): a reader never sees a half-written row. `resume_epoch` (the
    checkpoint's finished epochs) keeps the rows up to it, dropping those of epochs the
    resumed run will train again; a row for an epoch already present replaces it.
    """

    def __init__(self, path: Path, *, enabled: bool, resume_epoch: int | None) -> None:
        from ..models.runs import read_summary

        self.path, self.enabled, self.rows = Path(path), enabled, []
        if not enabled:
            return
        if resume_epoch is not None:
            self.rows = [r for r in read_summary(self.path.parent) if r["epoch"] <= resume_epoch]
            if self.path.is_file():
                self._write()
        elif self.path.exists():
            self.path.unlink()  # a folder without a checkpoint is started afresh

    def add(self, row: dict) -> None:
        """Record one epoch's row (keys of `runs.SUMMARY_FIELDS`; missing ones stay empty)."""
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [dict(row)]
        self._write()

    def _write(self) -> None:
        from ..core.paths import write_text
        from ..models.runs import SUMMARY_FIELDS

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _cell(row.get(k)) for k in SUMMARY_FIELDS})
        write_text(self.path, buf.getvalue())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest exact form: read back equal
    return str(value)


def duration(seconds: float) -> str:
    """H:MM:SS (e.g. 0:02:13)."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def epoch_line(description: str, row: dict, *, epochs: int, total_steps: int, best: bool) -> str:
    """The line printed after each epoch, e.g. `pretrain epoch 2/10 step 40/200 train loss
    0.8123 val loss 0.9010 (best) 58 img/s elapsed 0:02:13`."""
    parts = [
        f"{description} epoch {row['epoch']}/{epochs}",
        f"step {row['step']}/{total_steps}",
        f"train loss {row['train_loss']:.4f}",
    ]
    if row.get("val_loss") is not None:
        parts.append(f"val loss {row['val_loss']:.4f}" + (" (best)" if best else ""))
    parts += [f"{row['images_per_s']:.0f} img/s", f"elapsed {duration(row['elapsed_s'])}"]
    return "  ".join(parts)
