"""The run-dir contract: what `pretrain`/`adapt` write and everything else loads.

A run dir holds `config.json` (model config, train config, resolved schema, preprocessing,
parameter counts, versions), `holdout.json` (patients kept out of training),
`checkpoint-last.pt` (+ optional `checkpoint-epoch-XXXX.pt`, and `checkpoint-best.pt`, the
epoch of lowest held-out validation loss, when patients are held out), `metrics.jsonl` and
`summary.csv` (one row per finished epoch: `read_summary`).

- `load_run(path) -> Run`: the model rebuilt from the config, its weights, schema, checkpoint
  path and sha256, and its image preprocessing. `embed`, `adapt`, `export` load through it.
- `save_checkpoint` / `load_checkpoint`: tensors and plain containers only
  (`torch.load(path, weights_only=True)`), written under a temporary name and renamed.
- `check_schema_compatible`: THE answer to "can this model read this data?".
- `sha256_file`, `resolve_device`: one definition each.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import SlimpError
from ..core.paths import AtomicOutput, output_lock, prepare_output_dir, read_json, sha256_file
from ..data.schema import ResolvedSchema
from ..data.transforms import Preprocess
from . import build_model
from .config import ModelConfig

FORMAT = "slimp-checkpoint"
VERSION = 1
LAST = "checkpoint-last.pt"
# The checkpoint of the epoch with the lowest held-out validation loss; its `extra["best"]`
# (and every later checkpoint's) is {"epoch", "step", "val_loss"} of that epoch.
BEST = "checkpoint-best.pt"
BEST_KEY = "best"


def epoch_name(epoch: int) -> str:
    """File name of the checkpoint written after `epoch` (1-based count of finished epochs)."""
    return f"checkpoint-epoch-{epoch:04d}.pt"


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors / plain lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's device only (get_rng_state_all would open a context on every GPU).
        state["cuda"] = [torch.cuda.get_rng_state()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0].cpu())


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    epoch: int,
    step_in_epoch: int,
    step: int,
    config: dict,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically. `epoch`/`step_in_epoch`: where training continues."""
    path = Path(path)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "step_in_epoch": int(step_in_epoch),
        "step": int(step),
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
    }
    # the run dir's lock covers the file (run_dir_lock); a full disk is one line
    with AtomicOutput(path) as tmp, open(tmp, "wb") as fh:
        recorder = _WriteRecorder(fh)
        try:
            torch.save(state, recorder)
        except RuntimeError:
            # torch reports a failed write as "[enforce fail at inline_container.cc] unexpected
            # pos": the OSError that caused it (ENOSPC...) says what happened
            if recorder.error is not None:
                raise recorder.error from None
            raise
    return path


class _WriteRecorder(io.RawIOBase):
    """A binary file that keeps the first OSError of its writes (torch.save hides it)."""

    def __init__(self, fh) -> None:
        super().__init__()
        self.fh, self.error = fh, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `weights_only=True`; SlimpError when missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise SlimpError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated/foreign file is a user error
        raise SlimpError(
            f"{path}: not a readable slimp checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise SlimpError(f"{path}: not a slimp checkpoint (no '{FORMAT}' format marker)")
    if state.get("version", 0) > VERSION:
        raise SlimpError(
            f"{path}: checkpoint version {state['version']} is newer than this "
            f"slimp understands ({VERSION}); upgrade slimp"
        )
    return state


CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.csv"
# summary.csv's columns (timm's summary.csv): one row per finished epoch; val_loss is empty
# without held-out patients.
SUMMARY_FIELDS = ("epoch", "step", "train_loss", "val_loss", "lr", "images_per_s", "elapsed_s")
LOCK = ".slimp-run.lock"  # advisory lock of the process writing the run dir (holds its pid)
RUN_FORMAT = "slimp-run"
RUN_VERSION = 1


def resolve_checkpoint(checkpoint_or_rundir: str | Path) -> tuple[Path, Path]:
    """(checkpoint file, run dir) of a run dir or of a checkpoint file inside one."""
    path = Path(checkpoint_or_rundir)
    if path.is_dir():
        ckpt = path / LAST
        if not ckpt.is_file():
            raise SlimpError(
                f"{path}: no {LAST} in this folder; give a slimp run dir "
                "(the --out of pretrain/adapt) or a checkpoint file"
            )
        return ckpt, path
    if path.is_file():
        return path, path.parent
    raise SlimpError(f"{path}: no such run dir or checkpoint file")


def read_config(run_dir: str | Path) -> dict:
    """The run's `config.json` (SlimpError when missing or not a slimp run config)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise SlimpError(f"{path}: not found; is {run_dir} a slimp run dir?")
    cfg = read_json(path)
    _check_config(cfg, path)
    return cfg


def _check_config(cfg: Any, where: Path | str) -> None:
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        raise SlimpError(f"{where}: not a slimp run config (format '{RUN_FORMAT}')")
    for key in ("model", "schema", "variant"):
        if key not in cfg:
            raise SlimpError(f"{where}: run config lacks '{key}'")


@dataclass
class Run:
    """A trained run, loaded: the model (eval mode, on its device) and what describes it."""

    model: torch.nn.Module  # SlimpModel rebuilt from the config, weights loaded
    config: dict  # the run's config.json (or the copy inside a lone checkpoint)
    schema: ResolvedSchema | None  # the model's resolved schema (None: image-only model)
    checkpoint: Path  # the checkpoint file the weights came from
    sha256: str  # of that file
    preprocess: Preprocess  # image size and mean/std the model was trained with
    run_dir: Path


def load_run(checkpoint_or_rundir: str | Path, *, device: str | torch.device = "cpu") -> Run:
    """Rebuild a trained model from a run dir (or a checkpoint file in one) on `device`.

    The architecture comes from the run's config (`config.json` beside the checkpoint, else
    the copy inside the checkpoint); the weights from the checkpoint (`weights_only=True`).
    """
    ckpt_path, run_dir = resolve_checkpoint(checkpoint_or_rundir)
    state = load_checkpoint(ckpt_path, map_location="cpu")
    if (run_dir / CONFIG).is_file():
        config = read_config(run_dir)
    else:
        config = state.get("config")
        _check_config(config, ckpt_path)
    model_cfg = ModelConfig.from_dict(config["model"])
    schema = ResolvedSchema.from_dict(config["schema"]) if config.get("schema") else None
    model = build_model(model_cfg, schema, load_image_weights=False)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SlimpError(
            f"{ckpt_path}: weights do not match the model described by its "
            f"config ({first}); was the checkpoint moved from another run?"
        ) from None
    if config.get("preprocess"):
        # What the model was trained with wins over what its architecture would suggest now.
        model.preprocess = Preprocess.from_dict(config["preprocess"])
    model.to(torch.device(device) if isinstance(device, str) else device)
    model.eval()
    return Run(
        model=model,
        config=config,
        schema=schema,
        checkpoint=ckpt_path,
        sha256=sha256_file(ckpt_path),
        preprocess=model.preprocess,
        run_dir=run_dir,
    )


def schema_differences(expected: ResolvedSchema, actual: ResolvedSchema) -> list[str]:
    """Human-readable differences in feature names/types (what an encoder's inputs depend on)."""
    diffs = []
    for level in ("patient_features", "derived_patient_features", "lesion_features"):
        exp = {f["name"]: f["type"] for f in getattr(expected, level)}
        act = {f["name"]: f["type"] for f in getattr(actual, level)}
        label = level.replace("_features", "").replace("_", " ")
        missing = [n for n in exp if n not in act]
        extra = [n for n in act if n not in exp]
        retyped = [f"{n} ({exp[n]} -> {act[n]})" for n in exp if n in act and exp[n] != act[n]]
        if missing:
            diffs.append(f"{label} features missing from the data: {', '.join(missing)}")
        if extra:
            diffs.append(f"{label} features new in the data: {', '.join(extra)}")
        if retyped:
            diffs.append(f"{label} features of another type: {', '.join(retyped)}")
        if not (missing or extra or retyped) and list(exp) != list(act):
            diffs.append(f"{label} features in another order")
    return diffs


def check_schema_compatible(
    model_schema: ResolvedSchema | None,
    data_schema: ResolvedSchema,
    *,
    model_where: str,
    data_where: str,
    exact: bool = False,
) -> None:
    """SlimpError when data cannot be encoded for a model built on `model_schema`.

    Columns (names, types, order) must match. With `exact` (resume) vocabularies and
    statistics must match too (the data must be the same data); otherwise the model's own
    vocabularies/statistics encode the data (unknown categories read as missing).
    """
    if model_schema is None:
        return
    diffs = schema_differences(model_schema, data_schema)
    if diffs:
        raise SlimpError(
            f"{data_where} does not have the columns the model of {model_where} was built for "
            f"({'; '.join(diffs)}); use `slimp adapt` to continue pre-training on data with "
            "other columns, or `slimp embed --image-only`"
        )
    if exact and model_schema.fingerprint() != data_schema.fingerprint():
        raise SlimpError(
            f"{data_where}: its schema.json (vocabularies or statistics) differs from the one "
            f"{model_where} was trained on; resume on the same data, or start a new run"
        )


def read_metrics(run_dir: str | Path, *, kind: str = "train") -> list[dict]:
    """The run's metrics.jsonl rows of one kind ([] when none).

    kind "train": the training rows (means over `--log-every` steps: loss, lr, images_per_s);
    "validation": the per-epoch held-out rows (val_loss, ...); "all": every row in order.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if kind == "all":
        return rows
    if kind not in ("train", "validation"):
        raise SlimpError(f"unknown metrics kind {kind!r}; choose train, validation or all")
    want_val = kind == "validation"
    return [r for r in rows if ("val_loss" in r) == want_val]


def read_summary(run_dir: str | Path) -> list[dict]:
    """The run's summary.csv rows ([] when none): `epoch` and `step` as int, the other columns
    as float, None where empty (no held-out patients: `val_loss`)."""
    import csv

    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        rec: dict[str, Any] = {}
        for key in SUMMARY_FIELDS:
            value = row.get(key) or ""
            if key in ("epoch", "step"):
                rec[key] = int(value)
            else:
                rec[key] = float(value) if value != "" else None
        out.append(rec)
    return out


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path, *, enabled: bool = True) -> Iterator[Path]:
    """Create `run_dir` and hold an exclusive advisory lock on it for the block.

    A run dir has one writer: a second `pretrain`/`adapt --out` on it while the first runs
    gets a SlimpError naming the holder's pid instead of mixing two runs' files. The lock is
    `fcntl.flock` on `run_dir/.slimp-run.lock` (holding the pid). The kernel releases it when
    the holder exits however it exits (kill -9 included), so a stale file never blocks a later
    run; a clean exit removes the file. `enabled=False` (the other ranks of a torchrun job)
    only creates the folder.
    """
    run_dir = prepare_output_dir(run_dir, "--out")
    if not enabled:
        yield run_dir
        return
    # the lock covers the run dir's files: their own writes take no lock of theirs
    with output_lock(
        run_dir,
        contents=True,
        lock_file=run_dir / LOCK,
        busy=lambda pid: SlimpError(
            f"--out {run_dir} is in use by another slimp process (pid {pid}); wait for it to "
            "finish or choose another --out"
        ),
    ):
        yield run_dir
