"""`adapt()`: continual pre-training of a SLIMP model on a target dataset (paper Sec. 3.2, App. D).

The target's columns differ from the source's, so the tabular encoders get new input layers
built from the target's `schema.json` (`models.replace_tabular_inputs`); the transformers, CLS
tokens, projections and phenotype layer are kept. `tune="embeddings"` (default, the paper's
choice) trains only the ViT patch embedding and the tabular input embeddings; everything else is
frozen (requires_grad False, evaluated in eval mode, bit-identical afterwards). `tune="all"`
trains everything. A nested model adapted to data without patient-level metadata becomes `flat`
(notice). Paper defaults: B = 64 patients, 100 epochs.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import SlimpError
from ..data.schema import ResolvedSchema
from ..models import build_model, replace_tabular_inputs
from ..models.config import ModelConfig
from ..models.runs import load_run, resolve_checkpoint
from . import distributed as D
from .loop import TrainResult, notice, run_training
from .session import (
    SM3_MESSAGE,
    check_resume_data,
    check_resume_source,
    check_resume_train,
    data_record,
    holdout_record,
    load_resume_state,
    open_training_data,
    prepare_out,
    resolve_configs,
    run_config,
    seed_everything,
    single_writer,
    split_patients,
    training_session,
)
from .train_config import TrainConfig

TUNES = ("embeddings", "all")
# Continual pre-training defaults (paper Sec. 4.2): 64 patients per batch, 100 epochs. Positive
# sampling uses the labels; App. D describes the target stage as class-agnostic, so it is off
# (no probe label steers adaptation).
ADAPT_DEFAULTS = {"patients_per_batch": 64, "epochs": 100, "positive_sampling": False}


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
    with single_writer(out, data, verify=verify, shard_url=shard_url):  # one writer per run dir
        data, out = Path(data), Path(out)
        saved = prepare_out(out, resume, kind="adapt")
        if tune is None:
            tune = saved.get("tune", "embeddings") if saved else "embeddings"
        if tune not in TUNES:
            raise SlimpError(f"unknown --tune '{tune}'; choose embeddings or all")
        if saved is not None and saved.get("tune") != tune:
            raise SlimpError(
                f"--resume with --tune {tune} but the run in {out} used --tune {saved.get('tune')}"
            )
        _, train_cfg = resolve_configs(None, train, saved=saved, train_defaults=ADAPT_DEFAULTS)
        if train_cfg.method == "sm3":
            raise SlimpError(SM3_MESSAGE)
        ckpt_path, _ = resolve_checkpoint(checkpoint)
        device = D.device_for(train_cfg.device)
        with training_session(device) as info:
            index = open_training_data(data, shard_url, info)
            state = None
            if saved is not None:
                check_resume_train(saved, train_cfg, out)
                check_resume_data(saved, index, out, data)
                check_resume_source(saved, index, out)
            # The target's own held-out patients (the source run's split was of other data).
            patients = split_patients(index, train_cfg, run_dir=out, saved=saved, info=info)
            schema = patients.schema
            seed_everything(train_cfg.seed)
            if saved is not None:
                model = build_model(
                    ModelConfig.from_dict(saved["model"]),
                    ResolvedSchema.from_dict(saved["schema"]),
                    load_image_weights=False,
                )
                model.set_trainable(tune)
                state = load_resume_state(out, resume)
                source = saved["source"]
            else:
                model, source = prepare_model(
                    ckpt_path, schema, tune=tune, info=info, data_where=str(data)
                )
            config = run_config(
                kind="adapt",
                model=model,
                train=train_cfg,
                schema=schema,
                data=data_record(data, index),
                extra={"tune": tune, "source": source, "holdout": holdout_record(patients)},
            )
            return run_training(
                model=model,
                schema=schema,
                index=index,
                patients=patients,
                train=train_cfg,
                run_dir=out,
                config=config,
                device=device,
                info=info,
                resume_state=state,
                progress=progress,
                description="adapt",
                find_unused_parameters=True,
            )


def prepare_model(
    checkpoint: str | Path,
    schema,
    *,
    tune: str,
    info: D.DistInfo | None = None,
    data_where: str = "the target data",
):
    """The source model with new tabular inputs for `schema` and `tune` applied.

    Returns (model, source record for config.json). Call after seeding: the new input layers
    are drawn from the global torch RNG.
    """
    source_run = load_run(checkpoint, device="cpu")
    model, src_schema = source_run.model, source_run.schema
    source_variant = model.variant
    if model.variant != "image":
        replace_tabular_inputs(model, schema)
    if source_variant == "nested" and model.variant == "flat":
        notice(
            f"{data_where} has no patient-level features: the nested model is adapted as "
            "the flat variant (image <-> lesion metadata)",
            info,
        )
    model.set_trainable(tune)
    source = {
        "checkpoint": str(source_run.checkpoint.resolve()),
        "sha256": source_run.sha256,
        "variant": source_variant,
        "schema_fingerprint": src_schema.fingerprint() if src_schema else None,
        "data": source_run.config.get("data"),
    }
    return model, source


def adapt(
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
) -> Path:
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
    return adapt_run(
        checkpoint,
        data,
        out,
        train=train,
        tune=tune,
        resume=resume,
        progress=progress,
        verify=verify,
        shard_url=shard_url,
    ).run_dir
