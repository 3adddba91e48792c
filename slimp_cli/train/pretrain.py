"""`pretrain()`: SLIMP pre-training on ingested shards -> a run dir (DESIGN.md contract).

The run dir holds `config.json` (model config, train config, resolved schema, variant, the
trainable parameter names, data folder + manifest sha256), `checkpoint-last.pt` (+ optional
`checkpoint-epoch-XXXX.pt`) and `metrics.jsonl`.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import SlimpError
from ..data.shard_stream import ShardSource
from ..models import build_model
from ..models.config import ModelConfig
from . import distributed as D
from .budget import announce, image_recipe
from .data import PatientInfo, patient_infos
from .loop import TrainResult, notice, run_training
from .session import (
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
from .sm3 import prepare_sm3, sm3_defaults, sm3_model_config
from .streamed import SM3_STREAM_MESSAGE
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
    with single_writer(out, data, verify=verify, shard_url=shard_url):  # one writer per run dir
        data, out = Path(data), Path(out)
        saved = prepare_out(out, resume, kind="pretrain")
        model_defaults, train_defaults = sm3_defaults(train, saved, model)
        model_cfg, train_cfg = resolve_configs(
            model, train, saved=saved, train_defaults=train_defaults, model_defaults=model_defaults
        )
        sm3 = train_cfg.method == "sm3"
        if sm3 and shard_url is not None:
            raise SlimpError(SM3_STREAM_MESSAGE)
        if sm3:
            model_cfg = sm3_model_config(model_cfg, model, train_cfg, saved)
        if train_cfg.images_per_batch is not None and (sm3 or model_cfg.variant != "image"):
            raise SlimpError(
                "--images-per-batch is an option of --variant image (the SimCLR baseline); "
                "SLIMP's batches are --patients-per-batch patients"
            )
        device = D.device_for(train_cfg.device)
        with training_session(device) as info:
            index = open_training_data(data, shard_url, info)
            schema = index.schema
            if not sm3 and model_cfg.variant == "nested" and not schema.has_patient_features:
                model_cfg = model_cfg.replace(variant="flat")
                notice(
                    f"{data} has no patient-level features: training the flat variant (one "
                    "image <-> lesion-metadata InfoNCE)",
                    info,
                )
            state = None
            if saved is not None:
                check_resume_train(saved, train_cfg, out)
                check_resume_data(saved, index, out, data)
                check_resume_source(saved, index, out)
            patients = split_patients(index, train_cfg, run_dir=out, saved=saved, info=info)
            schema = patients.schema  # numerical statistics of the training patients
            baseline = None
            if model_cfg.variant == "image" and not sm3:  # SimCLR: its batch, lr and budget
                train_cfg, baseline = _image_baseline(
                    train, train_cfg, saved, index, patients, info
                )
                notice(announce(baseline), info)
            seed_everything(train_cfg.seed)
            net = build_model(model_cfg, schema, load_image_weights=saved is None)
            if saved is not None:
                if net.config.to_dict() != ModelConfig.from_dict(saved["model"]).to_dict():
                    raise SlimpError(
                        f"--resume with model options that differ from the run in {out}; "
                        "give the same options (or none) to resume"
                    )
                state = load_resume_state(out, resume)
            hooks, extra = None, None
            if sm3:  # SM3's stage, its --init weights and stage 2's pseudo-labels
                hooks, extra = prepare_sm3(
                    net,
                    index,
                    train_cfg,
                    info=info,
                    device=device,
                    resumed=saved is not None,
                    use=patients.use,
                )
            config = run_config(
                kind="pretrain",
                model=net,
                train=train_cfg,
                schema=schema,
                data=data_record(data, index),
                extra={
                    "holdout": holdout_record(patients),
                    **({"image_baseline": baseline} if baseline else {}),
                    **(extra or {}),
                },
            )
            return run_training(
                model=net,
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
                description="pretrain" if not sm3 else f"sm3 {train_cfg.stage}",
                hooks=hooks,
            )


def _image_baseline(given, train_cfg: TrainConfig, saved, index, patients, info):
    """(TrainConfig, config.json record) of an image-only run: `budget.image_recipe` fills
    images_per_batch and lr when the options leave them out (a resumed run keeps its own)."""
    if saved is not None or isinstance(given, TrainConfig):
        names = set(TrainConfig.__dataclass_fields__)
    else:
        names = set(given or {})
    streamed = isinstance(index, ShardSource)
    if streamed:  # counts only: min(n, N) needs no lesion list
        infos = [PatientInfo(e.images, ()) for e in index.patient_entries()]
    else:
        infos = patient_infos(index)
    return image_recipe(
        train_cfg,
        names,
        infos,
        patients.use,
        world_size=info.world_size,
        with_plans=not streamed,
    )


def pretrain(
    data: str | Path,
    out: str | Path,
    *,
    model: ModelConfig | dict | None = None,
    train: TrainConfig | dict | None = None,
    resume: bool | str | Path = False,
    progress: bool = False,
    verify: bool = False,
    shard_url: str | None = None,
) -> Path:
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
    return pretrain_run(
        data,
        out,
        model=model,
        train=train,
        resume=resume,
        progress=progress,
        verify=verify,
        shard_url=shard_url,
    ).run_dir


__all__ = ["pretrain", "pretrain_run"]
