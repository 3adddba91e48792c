"""`pretrain()`: SLIMP pre-training on ingested shards -> a run dir (DESIGN.md contract).

The run dir holds `config.json` (model config, train config, resolved schema, variant, the
trainable parameter names, data folder + manifest sha256), `checkpoint-last.pt` (+ optional
`checkpoint-epoch-XXXX.pt`) and `metrics.jsonl`.
"""

from __future__ import annotations

import contextlib

import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .. import __version__
from ..config import ModelConfig
from ..errors import SlimpError
from . import distributed as D
from .checkpoint import LAST, load_checkpoint
from .config import RESUMABLE_CHANGES, TrainConfig
from .loop import (TrainResult, json_safe, notice, parameter_counts, run_training,
                   trainable_names)
from .rundir import RUN_FORMAT, RUN_VERSION, check_schema_compatible, read_config, sha256_file

SM3_MESSAGE = "SM3 is not implemented yet; use --method slimp"


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and python's global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def resolve_configs(model: ModelConfig | dict | None, train: TrainConfig | dict | None, *,
                    saved: dict | None, train_defaults: dict | None = None
                    ) -> tuple[ModelConfig, TrainConfig]:
    """Full configs from dataclasses, or from option dicts applied over a base.

    The base is the saved run's config on `--resume` (so options not given again keep their
    saved values), else the defaults (`train_defaults` over TrainConfig's).
    """
    if isinstance(model, ModelConfig):
        model_cfg = model
    else:
        base = dict(saved["model"]) if saved else {}
        model_cfg = ModelConfig.from_dict({**base, **(model or {})})
    if isinstance(train, TrainConfig):
        train_cfg = train
    else:
        base = dict(saved["train"]) if saved else dict(train_defaults or {})
        train_cfg = TrainConfig.from_dict({**base, **(train or {})})
    return model_cfg, train_cfg


def check_resume_train(saved: dict, train: TrainConfig, run_dir: Path) -> None:
    """The options that decide the trajectory must equal the saved ones."""
    old = TrainConfig.from_dict(saved["train"]).to_dict()
    new = train.to_dict()
    diffs = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new
             if k not in RESUMABLE_CHANGES and old.get(k) != new[k]]
    if diffs:
        raise SlimpError(
            f"--resume with options that differ from the run in {run_dir} ({'; '.join(diffs)}); "
            "give the same options (or none) to resume, or start a new run with another --out")


def check_resume_data(saved: dict, index, run_dir: Path, data_dir: Path) -> None:
    """Resuming on other data (or changed data) would not continue the same run."""
    from ..schema import ResolvedSchema

    check_schema_compatible(ResolvedSchema.from_dict(saved["schema"]), index.schema,
                            model_where=str(run_dir), data_where=str(data_dir), exact=True)
    want = saved.get("data", {}).get("manifest_sha256")
    got = sha256_file(Path(data_dir) / "manifest.json")
    if want and want != got:
        raise SlimpError(f"{data_dir}: its manifest.json differs from the data {run_dir} was "
                         "trained on (changed or other data); resume on the same data")


def prepare_out(out: Path, resume: bool) -> dict | None:
    """Check the output folder; on resume return its saved config."""
    ckpt = out / LAST
    if resume:
        if not ckpt.is_file():
            raise SlimpError(f"--resume but {out} has no {LAST}; start without --resume")
        return read_config(out)
    if ckpt.exists():
        raise SlimpError(f"{out} already holds a run ({LAST}); add --resume to continue it, or "
                         "choose another --out")
    return None  # a folder without a checkpoint (e.g. a run stopped early) is started afresh


def data_record(data_dir: Path, index) -> dict:
    manifest = data_dir / "manifest.json"
    return {
        "dir": str(data_dir.resolve()),
        "manifest_sha256": sha256_file(manifest),
        "schema_fingerprint": index.schema.fingerprint(),
        "patients": len(index),
        "lesions": index.manifest.get("counts", {}).get("lesions"),
    }


def run_config(*, kind: str, model, train: TrainConfig, schema, data: dict,
               extra: dict | None = None) -> dict:
    """The run's config.json: everything needed to rebuild the model and to resume."""
    cfg = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "kind": kind,
        "slimp_version": __version__,
        "variant": model.variant,
        "model": model.config.to_dict(),
        "train": train.to_dict(),
        "schema": schema.to_dict(),
        "data": data,
        "trainable": trainable_names(model),
        "parameters": parameter_counts(model),
        **(extra or {}),
    }
    return json_safe(cfg)


@contextlib.contextmanager
def training_session(device: torch.device) -> Iterator[D.DistInfo]:
    """torch.distributed set up from torchrun's environment (a no-op for one process), and
    torn down afterwards unless the caller had set it up."""
    was_initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    info = D.init_from_env(device)
    try:
        yield info
    finally:
        if not was_initialised:
            D.shutdown()


def open_training_data(data: Path):
    """The ShardIndex of `data`; SlimpError when it holds no patients."""
    from ..shards import ShardIndex

    index = ShardIndex.open(data)
    if len(index) == 0:
        raise SlimpError(f"{data}: the shards hold no patients; ingest a dataset with images")
    return index


def pretrain_run(data: str | Path, out: str | Path, *, model: ModelConfig | dict | None = None,
                 train: TrainConfig | dict | None = None, resume: bool = False,
                 progress: bool = False) -> TrainResult:
    """`pretrain` returning the `TrainResult` (with the trained model) instead of the path."""
    from ..models import build_model

    data, out = Path(data), Path(out)
    saved = prepare_out(out, resume)
    model_cfg, train_cfg = resolve_configs(model, train, saved=saved)
    if train_cfg.method == "sm3":
        raise SlimpError(SM3_MESSAGE)
    device = D.resolve_device(train_cfg.device)
    with training_session(device) as info:
        index = open_training_data(data)
        schema = index.schema
        if model_cfg.variant == "nested" and not schema.has_patient_features:
            model_cfg = model_cfg.replace(variant="flat")
            notice(f"{data} has no patient-level features: training the flat variant (one "
                   "image <-> lesion-metadata InfoNCE)", info)
        state = None
        if saved is not None:
            check_resume_train(saved, train_cfg, out)
            check_resume_data(saved, index, out, data)
        seed_everything(train_cfg.seed)
        net = build_model(model_cfg, schema, load_image_weights=saved is None)
        if saved is not None:
            if net.config.to_dict() != ModelConfig.from_dict(saved["model"]).to_dict():
                raise SlimpError(f"--resume with model options that differ from the run in {out}; "
                                 "give the same options (or none) to resume")
            state = load_checkpoint(out / LAST)
        config = run_config(kind="pretrain", model=net, train=train_cfg, schema=schema,
                            data=data_record(data, index))
        return run_training(model=net, schema=schema, index=index, train=train_cfg, run_dir=out,
                            config=config, device=device, info=info, resume_state=state,
                            progress=progress, description="pretrain")


def pretrain(data: str | Path, out: str | Path, *, model: ModelConfig | dict | None = None,
             train: TrainConfig | dict | None = None, resume: bool = False,
             progress: bool = False) -> Path:
    """Pre-train SLIMP on the ingested shards in `data`; write the run dir `out`; return it.

    Args:
        data: folder written by `slimp ingest` (shards, schema.json, manifest.json).
        out: the run dir to create (it must not hold a run unless `resume`).
        model: a ModelConfig, or a dict of ModelConfig fields over the defaults (over the saved
            run's config with `resume`). None = defaults. The `nested` variant becomes `flat`
            (with a notice) when the data has no patient-level features.
        train: a TrainConfig, or a dict of its fields (same rules as `model`).
        resume: continue from `out/checkpoint-last.pt` (model, optimiser, scheduler, RNG and
            sampler state); on CPU the result equals an uninterrupted run's, bit for bit.
        progress: show a progress bar on stderr.

    Raises:
        SlimpError: bad options, unreadable data, fewer patients than a batch, a non-finite
            loss (the last good checkpoint is kept), resume on other data or options.
    """
    return pretrain_run(data, out, model=model, train=train, resume=resume,
                        progress=progress).run_dir


__all__ = ["pretrain", "pretrain_run", "resolve_configs", "seed_everything", "SM3_MESSAGE"]
