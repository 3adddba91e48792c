"""What `pretrain` and `adapt` share: configs over defaults or a saved run, resume checks, the
output folder, the run's `config.json`, the distributed session and the training data."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import SlimpError
from ..model_config import ModelConfig
from ..paths import json_safe, prepare_output_dir
from ..runs import LAST, RUN_FORMAT, RUN_VERSION, check_schema_compatible, read_config, sha256_file
from ..schema import ResolvedSchema
from ..shards import ShardIndex
from . import distributed as D
from .loop import parameter_counts, trainable_names
from .train_config import RESUMABLE_CHANGES, TrainConfig

SM3_MESSAGE = "SM3 is not implemented yet; use --method slimp"


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and python's global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def resolve_configs(
    model: ModelConfig | dict | None,
    train: TrainConfig | dict | None,
    *,
    saved: dict | None,
    train_defaults: dict | None = None,
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
    diffs = [
        f"{k}: {old[k]!r} -> {new[k]!r}"
        for k in new
        if k not in RESUMABLE_CHANGES and old.get(k) != new[k]
    ]
    if diffs:
        raise SlimpError(
            f"--resume with options that differ from the run in {run_dir} ({'; '.join(diffs)}); "
            "give the same options (or none) to resume, or start a new run with another --out"
        )


def check_resume_data(saved: dict, index, run_dir: Path, data_dir: Path) -> None:
    """Resuming on other data (or changed data) would not continue the same run."""
    check_schema_compatible(
        ResolvedSchema.from_dict(saved["schema"]),
        index.schema,
        model_where=str(run_dir),
        data_where=str(data_dir),
        exact=True,
    )
    want = saved.get("data", {}).get("manifest_sha256")
    got = sha256_file(Path(data_dir) / "manifest.json")
    if want and want != got:
        raise SlimpError(
            f"{data_dir}: its manifest.json differs from the data {run_dir} was "
            "trained on (changed or other data); resume on the same data"
        )


def prepare_out(out: Path, resume: bool) -> dict | None:
    """Check the output folder; on resume return its saved config."""
    ckpt = out / LAST
    if resume:
        if not ckpt.is_file():
            raise SlimpError(f"--resume but {out} has no {LAST}; start without --resume")
        return read_config(out)
    if ckpt.exists():
        raise SlimpError(
            f"{out} already holds a run ({LAST}); add --resume to continue it, or "
            "choose another --out"
        )
    prepare_output_dir(out, "--out")  # created (or found unwritable) before any computing
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


def run_config(
    *, kind: str, model, train: TrainConfig, schema, data: dict, extra: dict | None = None
) -> dict:
    """The run's config.json: everything needed to rebuild the model and to resume."""
    cfg = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "kind": kind,
        "slimp_version": __version__,
        "variant": model.variant,
        "model": model.config.to_dict(),
        # image size and mean/std of the image model (timm's pretrained_cfg), for embed/export
        "preprocess": model.preprocess.to_dict(),
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
    index = ShardIndex.open(data)
    if len(index) == 0:
        raise SlimpError(f"{data}: the shards hold no patients; ingest a dataset with images")
    return index
