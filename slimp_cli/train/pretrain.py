"""`pretrain()`: SLIMP pre-training on ingested shards -> a run dir (DESIGN.md contract).

The run dir holds `config.json` (model config, train config, resolved schema, variant, the
trainable parameter names, data folder + manifest sha256), `checkpoint-last.pt` (+ optional
`checkpoint-epoch-XXXX.pt`) and `metrics.jsonl`. The training itself is `stage.run_stage` with
the `PRETRAIN` stage (shared with `adapt`); this module keeps the public signatures.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from ..models.config import ModelConfig
from .loop import TrainResult
from .stage import PRETRAIN, run_stage
from .train_config import TrainConfig


def pretrain_run(
    data: str | Path,
    out: str | Path,
    *,
    model: ModelConfig | dict | None = None,
    train: TrainConfig | dict | None = None,
    resume: bool | str | Path = False,
    progress: bool = False,
    verify: bool = False,
    shard_url: str | None = None,
) -> TrainResult:
    """`pretrain` returning the `TrainResult` (with the trained model) instead of the path."""
    return run_stage(
        PRETRAIN,
        data,
        out,
        model=model,
        train=train,
        resume=resume,
        progress=progress,
        verify=verify,
        shard_url=shard_url,
    )


def pretrain(data: str | Path, out: str | Path, **options) -> Path:
    """Pre-train SLIMP on the ingested shards in `data`; write the run dir `out`; return it.

    Args:
        data: folder written by `slimp ingest` (shards, schema.json, manifest.json).
        out: the run dir to create (it must not hold a run unless `resume`).
        model: a ModelConfig, or a dict of ModelConfig fields over the defaults (over the saved
            run's config with `resume`). None = defaults. The `nested` variant becomes `flat`
            (with a notice) when the data has no patient-level features.
        train: a TrainConfig, or a dict of its fields (same rules as `model`).
        resume: continue from `out/checkpoint-last.pt` (True or "latest"; model, optimiser,
            scheduler, RNG and sampler state; on CPU the result equals an uninterrupted run's,
            bit for bit), or from a path: a run dir or a checkpoint file (`session.prepare_out`).
        progress: show a progress bar on stderr.
        verify: check every shard's sha256 against the data's manifest.json first.
        shard_url: stream the shards through this URL template (`{name}` = each shard's file
            name in manifest.json; `data` then needs only manifest.json, schema.json and,
            ideally, index.json): batches at epoch granularity (train/streamed.py).

    Raises:
        SlimpError: bad options, unreadable data, fewer patients than a batch, a non-finite
            loss (the last good checkpoint is kept), resume on other data or options, another
            process writing `out`.
    """
    return pretrain_run(data, out, **options).run_dir


# `pretrain` takes `pretrain_run`'s arguments (help() and inspect show them)
pretrain.__signature__ = inspect.signature(pretrain_run).replace(return_annotation="Path")


__all__ = ["pretrain", "pretrain_run"]
