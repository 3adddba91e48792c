"""`adapt()`: continual pre-training of a SLIMP model on a target dataset (paper Sec. 3.2, App. D).

The target's columns differ from the source's, so the tabular encoders get new input layers
built from the target's `schema.json` (`models.replace_tabular_inputs`); the transformers, CLS
tokens, projections and phenotype layer are kept. `tune="embeddings"` (default, the paper's
choice) trains only the ViT patch embedding and the tabular input embeddings; everything else is
frozen (requires_grad False, evaluated in eval mode, bit-identical afterwards). `tune="all"`
trains everything. A nested model adapted to data without patient-level metadata becomes `flat`
(notice). Paper defaults: B = 64 patients, 100 epochs (`ADAPT_DEFAULTS`).

The training itself is `stage.run_stage` with the `ADAPT` stage (shared with `pretrain`: the
stage table says what differs); this module keeps the public signatures.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from .loop import TrainResult
from .stage import ADAPT, ADAPT_DEFAULTS, TUNES, prepare_model, run_stage
from .train_config import TrainConfig


def adapt_run(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    train: TrainConfig | dict | None = None,
    tune: str | None = None,
    resume: bool | str | Path = False,
    progress: bool = False,
    verify: bool = False,
    shard_url: str | None = None,
) -> TrainResult:
    """`adapt` returning the `TrainResult` (with the adapted model) instead of the path."""
    return run_stage(
        ADAPT,
        data,
        out,
        source=checkpoint,
        train=train,
        tune=tune,
        resume=resume,
        progress=progress,
        verify=verify,
        shard_url=shard_url,
    )


def adapt(checkpoint: str | Path, data: str | Path, out: str | Path, **options) -> Path:
    """Continual pre-training of the model in `checkpoint` on the shards in `data` -> run dir.

    Args:
        checkpoint: a run dir of `pretrain`/`adapt`, or a checkpoint file in one.
        data: the target dataset's ingested folder (its columns may differ from the source's).
        out: the new run dir.
        train: a TrainConfig, or a dict of its fields over the adapt defaults (B = 64,
            100 epochs; over the saved run's config with `resume`).
        tune: "embeddings" (default: ViT patch embedding + tabular input embeddings trainable,
            all else frozen) or "all".
        resume: continue an interrupted adapt run in `out` (True or "latest"), or from a run
            dir or checkpoint file (as `pretrain`).
        progress: show a progress bar on stderr.
        verify: check every shard's sha256 against the data's manifest.json first.
        shard_url: stream the target's shards through this URL template (as `pretrain`).

    `config.json` records the source checkpoint (path, sha256), `tune` and the names of the
    trainable parameters (`trainable`).
    """
    return adapt_run(checkpoint, data, out, **options).run_dir


# `adapt` takes `adapt_run`'s arguments (help() and inspect show them)
adapt.__signature__ = inspect.signature(adapt_run).replace(return_annotation="Path")


__all__ = ["ADAPT_DEFAULTS", "TUNES", "adapt", "adapt_run", "prepare_model"]
