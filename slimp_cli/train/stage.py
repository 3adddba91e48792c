"""One training entry for `pretrain` and `adapt`: a `Stage` says how they differ, `run_stage`
runs either.

Both stages take the same path: one writer per run dir, configs over the stage's defaults (or
the saved run's on `--resume`), the resume checks, their own held-out patients drawn from the
data they train on (`session.split_patients`), `config.json` and `loop.run_training`. What
differs is data in the `STAGES` table:

| field | pretrain | adapt |
| --- | --- | --- |
| `name` (config.json `kind`, resume's kind check, progress) | "pretrain" | "adapt" |
| `train_defaults` (over TrainConfig's) | none (B 4, 150 epochs) | ADAPT_DEFAULTS (B 64, 100) |
| `methods` | slimp, sm3 (SM3's recipes then supply the defaults) | slimp |
| `model_from` | "config": a new model of ModelConfig | "source": a run's, new tabular inputs |
| `tunes` (what trains; the first is the default) | () = everything | embeddings, all |
| `find_unused_parameters` (DDP: frozen layers get no grad) | False | True |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..core.errors import SlimpError
from ..data.schema import ResolvedSchema
from ..data.shard_stream import ShardSource
from ..models import build_model, replace_tabular_inputs
from ..models.config import ModelConfig
from ..models.runs import load_run, resolve_checkpoint
from . import distributed as D
from .budget import announce, image_recipe
from .data import PatientInfo, patient_infos
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
from .sm3 import prepare_sm3, sm3_defaults, sm3_model_config
from .streamed import SM3_STREAM_MESSAGE
from .train_config import TrainConfig

MODEL_FROM = ("config", "source")
TUNES = ("embeddings", "all")
# Continual pre-training defaults (paper Sec. 4.2): 64 patients per batch, 100 epochs. Positive
# sampling uses the labels; App. D describes the target stage as class-agnostic, so it is off
# (no probe label steers adaptation).
ADAPT_DEFAULTS = {"patients_per_batch": 64, "epochs": 100, "positive_sampling": False}


@dataclass(frozen=True, kw_only=True)
class Stage:
    """What one training stage is, as data (the table in this module's docstring).

    Args:
        name: the command; config.json's `kind` (a run resumes only with its own stage) and
            the progress bar's label.
        train_defaults: TrainConfig fields over TrainConfig's defaults (under the saved run's
            config on `--resume`; SM3's recipes replace them for `--method sm3`).
        methods: the TrainConfig methods this stage trains ("sm3" brings SM3's recipes, model
            config and stage hooks).
        model_from: "config" (a new model of ModelConfig; a nested model on data without
            patient features becomes flat) or "source" (a source run's model, its tabular
            encoders given new input layers for the target's schema: `prepare_model`).
        tunes: the `tune` choices (which parameters train: `model.set_trainable`), the first
            the default; () = everything trains and `tune` is refused.
        find_unused_parameters: DistributedDataParallel's flag (frozen parameters get no
            gradient).
    """

    name: str
    train_defaults: Mapping[str, object] = field(default_factory=dict)
    methods: tuple[str, ...] = ("slimp",)
    model_from: str = "config"
    tunes: tuple[str, ...] = ()
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Stage: name is empty")
        if self.model_from not in MODEL_FROM:
            raise ValueError(
                f"Stage {self.name}: model_from {self.model_from!r} not in {MODEL_FROM}"
            )
        unknown = set(self.train_defaults) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"Stage {self.name}: train_defaults name no TrainConfig field: {unknown}"
            )
        if not self.methods:
            raise ValueError(f"Stage {self.name}: no methods")
        object.__setattr__(self, "train_defaults", MappingProxyType(dict(self.train_defaults)))

    def resolve_tune(self, tune: str | None, saved: dict | None, out: Path) -> str | None:
        """The run's `tune`: the given one, else the saved run's, else the stage's default."""
        if not self.tunes:
            if tune is not None:
                raise SlimpError(f"{self.name} trains every parameter; it takes no --tune")
            return None
        if tune is None:
            tune = saved.get("tune", self.tunes[0]) if saved else self.tunes[0]
        if tune not in self.tunes:
            raise SlimpError(f"unknown --tune '{tune}'; choose {' or '.join(self.tunes)}")
        if saved is not None and saved.get("tune") != tune:
            raise SlimpError(
                f"--resume with --tune {tune} but the run in {out} used --tune {saved.get('tune')}"
            )
        return tune


PRETRAIN = Stage(name="pretrain", methods=("slimp", "sm3"))
ADAPT = Stage(
    name="adapt",
    train_defaults=ADAPT_DEFAULTS,
    model_from="source",
    tunes=TUNES,
    find_unused_parameters=True,
)
STAGES = {s.name: s for s in (PRETRAIN, ADAPT)}


def run_stage(
    stage: Stage | str,
    data: str | Path,
    out: str | Path,
    *,
    source: str | Path | None = None,
    model: ModelConfig | dict | None = None,
    train: TrainConfig | dict | None = None,
    tune: str | None = None,
    resume: bool | str | Path = False,
    progress: bool = False,
    verify: bool = False,
    shard_url: str | None = None,
) -> TrainResult:
    """Train `stage` on the shards in `data` into the run dir `out`; the `TrainResult`.

    `source`: the run dir (or checkpoint file) a "source" stage starts from; `model`: the
    ModelConfig (or dict of its fields) of a "config" stage. The other arguments as
    `pretrain.pretrain` (`tune` as `adapt.adapt`).
    """
    stage = STAGES[stage] if isinstance(stage, str) else stage
    from_source = stage.model_from == "source"
    if from_source == (source is None) or (from_source and model is not None):
        raise SlimpError(
            f"internal: stage {stage.name} takes "
            + ("a source run and no model config" if from_source else "a model config, no source")
        )
    with single_writer(out, data, verify=verify, shard_url=shard_url):  # one writer per run dir
        data, out = Path(data), Path(out)
        saved = prepare_out(out, resume, kind=stage.name)
        tune = stage.resolve_tune(tune, saved, out)
        model_defaults, train_defaults = None, None
        if "sm3" in stage.methods:  # SM3's recipe (given its stage and weights), when SM3
            model_defaults, train_defaults = sm3_defaults(train, saved, model)
        model_cfg, train_cfg = resolve_configs(
            model,
            train,
            saved=saved,
            train_defaults=train_defaults or stage.train_defaults,
            model_defaults=model_defaults,
        )
        if train_cfg.method not in stage.methods:
            raise SlimpError(
                SM3_MESSAGE
                if train_cfg.method == "sm3"
                else f"{stage.name} does not train --method {train_cfg.method}"
            )
        sm3 = train_cfg.method == "sm3"
        if sm3 and shard_url is not None:
            raise SlimpError(SM3_STREAM_MESSAGE)
        if sm3:
            model_cfg = sm3_model_config(model_cfg, model, train_cfg, saved)
        if (
            not from_source
            and train_cfg.images_per_batch is not None
            and (sm3 or model_cfg.variant != "image")
        ):
            raise SlimpError(
                "--images-per-batch is an option of --variant image (the SimCLR baseline); "
                "SLIMP's batches are --patients-per-batch patients"
            )
        ckpt_path = resolve_checkpoint(source)[0] if from_source else None
        device = D.device_for(train_cfg.device)
        with training_session(device) as info:
            index = open_training_data(data, shard_url, info)
            if (
                not from_source
                and not sm3
                and model_cfg.variant == "nested"
                and not index.schema.has_patient_features
            ):
                model_cfg = model_cfg.replace(variant="flat")
                notice(
                    f"{data} has no patient-level features: training the flat variant (one "
                    "image <-> lesion-metadata InfoNCE)",
                    info,
                )
            if saved is not None:
                check_resume_train(saved, train_cfg, out)
                check_resume_data(saved, index, out, data)
                check_resume_source(saved, index, out)
            # Each stage holds out patients of the data it trains on (adapt: of the target;
            # the source run's split was of other data).
            patients = split_patients(index, train_cfg, run_dir=out, saved=saved, info=info)
            schema = patients.schema  # numerical statistics of the training patients
            extra: dict = {}
            if not from_source and model_cfg.variant == "image" and not sm3:
                # SimCLR: its batch, lr and budget
                train_cfg, baseline = _image_baseline(
                    train, train_cfg, saved, index, patients, info
                )
                notice(announce(baseline), info)
                extra["image_baseline"] = baseline
            seed_everything(train_cfg.seed)
            if from_source:
                net, src = _source_model(saved, ckpt_path, schema, tune, info, data)
                extra = {"tune": tune, "source": src, **extra}
            else:
                net = build_model(model_cfg, schema, load_image_weights=saved is None)
                if saved is not None and (
                    net.config.to_dict() != ModelConfig.from_dict(saved["model"]).to_dict()
                ):
                    raise SlimpError(
                        f"--resume with model options that differ from the run in {out}; "
                        "give the same options (or none) to resume"
                    )
            state = load_resume_state(out, resume) if saved is not None else None
            hooks = None
            if sm3:  # SM3's stage, its --init weights and stage 2's pseudo-labels
                hooks, sm3_extra = prepare_sm3(
                    net,
                    index,
                    train_cfg,
                    info=info,
                    device=device,
                    resumed=saved is not None,
                    use=patients.use,
                )
                extra.update(sm3_extra or {})
            holdout = {"holdout": holdout_record(patients)}
            # config.json's key order as before the stages were one entry: adapt's tune and
            # source lead, pretrain's holdout leads
            extra = {**extra, **holdout} if from_source else {**holdout, **extra}
            config = run_config(
                kind=stage.name,
                model=net,
                train=train_cfg,
                schema=schema,
                data=data_record(data, index),
                extra=extra,
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
                description=f"sm3 {train_cfg.stage}" if sm3 else stage.name,
                hooks=hooks,
                find_unused_parameters=stage.find_unused_parameters,
            )


def _source_model(saved, checkpoint: Path, schema, tune: str, info, data: Path):
    """(model, config.json `source` record) of a "source" stage: on resume the run's own model
    rebuilt from its config (its weights come with the resumed state), else `prepare_model`."""
    if saved is None:
        return prepare_model(checkpoint, schema, tune=tune, info=info, data_where=str(data))
    model = build_model(
        ModelConfig.from_dict(saved["model"]),
        ResolvedSchema.from_dict(saved["schema"]),
        load_image_weights=False,
    )
    model.set_trainable(tune)
    return model, saved["source"]


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


__all__ = ["ADAPT", "ADAPT_DEFAULTS", "PRETRAIN", "STAGES", "TUNES", "Stage", "run_stage"]
