"""Run directories: `config.json` + `checkpoint-last.pt` (+ epoch checkpoints) + `metrics.jsonl`.

`load_model(run_dir_or_checkpoint)` rebuilds a trained model from the config alone (model
config, resolved schema, variant) and loads its weights; `slimp embed` and `adapt` use it.
`check_schema_compatible` tells whether data can be fed to a model built for another schema.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import SlimpError
from ..paths import read_json
from ..schema import ResolvedSchema
from .checkpoint import LAST, load_checkpoint
from .distributed import resolve_device  # noqa: F401  (re-exported for embed)

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RUN_FORMAT = "slimp-run"
RUN_VERSION = 1


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_checkpoint(checkpoint_or_rundir: str | Path) -> tuple[Path, Path]:
    """(checkpoint file, run dir) of a run dir or of a checkpoint file inside one."""
    path = Path(checkpoint_or_rundir)
    if path.is_dir():
        ckpt = path / LAST
        if not ckpt.is_file():
            raise SlimpError(f"{path}: no {LAST} in this folder; give a slimp run dir "
                             "(the --out of pretrain/adapt) or a checkpoint file")
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


def load_model(checkpoint_or_rundir: str | Path, *, device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, dict, ResolvedSchema | None]:
    """Rebuild a trained model from a run dir (or a checkpoint file in one) on `device`.

    The architecture comes from the run's config (`config.json` beside the checkpoint, else
    the copy inside the checkpoint); the weights from the checkpoint (`weights_only=True`).
    Returns (model in eval mode, the run config dict, the model's resolved schema or None
    for an image-only model).
    """
    from ..config import ModelConfig
    from ..models import build_model

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
        raise SlimpError(f"{ckpt_path}: weights do not match the model described by its "
                         f"config ({first}); was the checkpoint moved from another run?") from None
    model.to(torch.device(device) if isinstance(device, str) else device)
    model.eval()
    return model, config, schema


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


def check_schema_compatible(model_schema: ResolvedSchema | None, data_schema: ResolvedSchema,
                            *, model_where: str, data_where: str, exact: bool = False) -> None:
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
            "other columns, or `slimp embed --image-only`")
    if exact and model_schema.fingerprint() != data_schema.fingerprint():
        raise SlimpError(
            f"{data_where}: its schema.json (vocabularies or statistics) differs from the one "
            f"{model_where} was trained on; resume on the same data, or start a new run")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The run's metrics.jsonl lines as dicts ([] when none)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
