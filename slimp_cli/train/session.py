"""What `pretrain` and `adapt` share: configs over defaults or a saved run, resume checks, the
output folder, the run's `config.json`, the distributed session and the training data."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..core.errors import SlimpError
from ..core.paths import json_safe, prepare_output_dir, write_text
from ..data.holdout import (
    HOLDOUT,
    Holdout,
    choose_holdout,
    official_holdout,
    patient_official_splits,
    patient_positives,
    read_holdout,
    write_holdout,
)
from ..data.schema import ResolvedSchema
from ..data.shard_stream import VERIFY_MESSAGE, ShardSource, check_template
from ..data.shards import ShardIndex, verify_shards
from ..models import patient_record
from ..models.config import ModelConfig
from ..models.runs import (
    BEST,
    CONFIG,
    LAST,
    METRICS,
    RUN_FORMAT,
    RUN_VERSION,
    SUMMARY,
    check_schema_compatible,
    load_checkpoint,
    read_config,
    run_dir_lock,
    sha256_file,
)
from . import distributed as D
from .loop import notice, parameter_counts, trainable_names
from .report import TENSORBOARD_DIR
from .streamed import STATISTICS_NOTE
from .train_config import RESUMABLE_CHANGES, TrainConfig

# `adapt` is SLIMP's continual pre-training (new tabular inputs); SM3 has no metadata encoder.
SM3_MESSAGE = "adapt continues SLIMP pre-training; train SM3 with `slimp pretrain --method sm3`"


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
    model_defaults: dict | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """Full configs from dataclasses, or from option dicts applied over a base.

    The base is the saved run's config on `--resume` (so options not given again keep their
    saved values), else the defaults (`train_defaults` / `model_defaults` over TrainConfig's /
    ModelConfig's).
    """
    if isinstance(model, ModelConfig):
        model_cfg = model
    else:
        base = dict(saved["model"]) if saved else dict(model_defaults or {})
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
    )
    # The model's schema holds training-patient statistics; the data's own is recorded apart.
    want_fp = saved.get("data", {}).get("schema_fingerprint")
    if want_fp and want_fp != index.schema.fingerprint():
        raise SlimpError(
            f"{data_dir}: its schema.json (vocabularies or statistics) differs from the one "
            f"{run_dir} was trained on; resume on the same data, or start a new run"
        )
    want = saved.get("data", {}).get("manifest_sha256")
    got = sha256_file(Path(data_dir) / "manifest.json")
    if want and want != got:
        raise SlimpError(
            f"{data_dir}: its manifest.json differs from the data {run_dir} was "
            "trained on (changed or other data); resume on the same data"
        )


def check_resume_source(saved: dict, index, run_dir: Path) -> None:
    """A run resumes reading its data as it started: from local shards, or streamed (the
    template itself may change, e.g. a moved bucket: manifest.json says it is the same data)."""
    was = saved.get("data", {}).get("shard_url")
    now = index.template if isinstance(index, ShardSource) else None
    if (was is None) != (now is None):
        how = f"--shard-url {was!r}" if was else "the local shards (no --shard-url)"
        raise SlimpError(
            f"{run_dir} was trained from {how}; --resume it the same way (the batches of a "
            "streamed and a local run differ)"
        )


@contextlib.contextmanager
def single_writer(
    out: str | Path, data: str | Path, *, verify: bool, shard_url: str | None = None
) -> Iterator[None]:
    """Hold the run dir's one-writer lock for the whole run (from the resume checks to the last
    checkpoint; rank 0 only under torchrun); with `verify`, check the shards' sha256 first."""
    if shard_url is not None:
        check_template(shard_url)
        if verify:
            raise SlimpError(VERIFY_MESSAGE)
    out = Path(out)
    main = D.env_info().is_main
    created = not out.exists()
    try:
        with run_dir_lock(out, enabled=main):
            before = _run_files(out)
            try:
                if verify:
                    verify_shards(data)
                yield
            except BaseException:
                if main and not (out / LAST).exists():
                    _remove_unfinished(out, before)
                raise
    finally:
        if created and main:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: the run failed before it wrote anything


# What a run resumed into a new --out copies there first (`prepare_out`).
CONTINUED_FILES = (CONFIG, HOLDOUT, METRICS, SUMMARY)
# What a run writes before its first checkpoint (those, and the best checkpoint a continued
# run copies: `loop.reconcile_best`).
RUN_FILES = (*CONTINUED_FILES, BEST)


def _run_files(out: Path) -> dict[str, tuple[int, int] | None]:
    """(inode, mtime) of each of RUN_FILES (and the tensorboard folder) in `out`, None when
    absent."""
    found: dict[str, tuple[int, int] | None] = {}
    for name in (*RUN_FILES, TENSORBOARD_DIR):
        try:
            st = (out / name).stat()
            found[name] = (st.st_ino, st.st_mtime_ns)
        except OSError:
            found[name] = None
    return found


def _remove_unfinished(out: Path, before: dict) -> None:
    """A run that failed or was stopped before its first checkpoint leaves nothing behind
    that looks like a run: the files it wrote (new or rewritten since it started) go, and a
    tensorboard folder it created."""
    import shutil

    now = _run_files(out)
    for name, state in now.items():
        if state is not None and state != before.get(name):
            with contextlib.suppress(OSError):
                (out / name).unlink()
    if before.get(TENSORBOARD_DIR) is None and (out / TENSORBOARD_DIR).is_dir():
        shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)


# `--resume` alone: the run dir's own checkpoint-last.pt.
LATEST = "latest"


def resume_checkpoint(out: Path, resume: bool | str | Path | None) -> Path | None:
    """The checkpoint file a run resumes from, None when it does not resume.

    `resume`: False/None (no resume), True or "latest" (`out`'s checkpoint-last.pt), or a path:
    a run dir (its checkpoint-last.pt) or a checkpoint file (e.g. checkpoint-best.pt or
    checkpoint-epoch-0003.pt). SlimpError (one line) when the path holds no checkpoint.
    """
    if resume is None or resume is False:
        return None
    if resume is True or resume == LATEST:
        return Path(out) / LAST
    path = Path(resume)
    if path.is_dir():
        if not (path / LAST).is_file():
            raise SlimpError(
                f"--resume {path}: no {LAST} in this folder; give a run dir of pretrain/adapt "
                "or a checkpoint file"
            )
        return path / LAST
    if not path.is_file():
        raise SlimpError(f"--resume {path}: no such run dir or checkpoint file")
    if not (path.parent / CONFIG).is_file():
        raise SlimpError(
            f"--resume {path}: no {CONFIG} beside it; give a checkpoint inside its run dir"
        )
    return path


def prepare_out(out: Path, resume: bool | str | Path | None, *, kind: str | None = None):
    """Check the output folder; on resume return the saved config (None otherwise).

    `resume` as `resume_checkpoint`. A checkpoint in another run dir than `out` starts `out`
    as that run's continuation: `out` must not hold a run, and the source's config.json,
    holdout.json, metrics.jsonl and summary.csv are copied into it (the rows past the
    checkpoint are dropped when training starts). `kind` ("pretrain"/"adapt"): the saved run
    must be of that kind.
    """
    out = Path(out)
    ckpt = resume_checkpoint(out, resume)
    last = out / LAST
    if ckpt is None:
        if last.exists():
            raise SlimpError(
                f"{out} already holds a run ({LAST}); add --resume to continue it, or "
                "choose another --out"
            )
        prepare_output_dir(out, "--out")  # created (or found unwritable) before any computing
        return None  # a folder without a checkpoint (e.g. a run stopped early) starts afresh
    if ckpt == last and not last.is_file():
        why = (
            " (it never completed a step: stopped or failed before its first checkpoint)"
            if (out / CONFIG).is_file()
            else ""
        )
        raise SlimpError(f"--resume but {out} has no {LAST}{why}; start it again without --resume")
    source = ckpt.parent
    if source.resolve() != out.resolve():
        if last.exists():
            raise SlimpError(
                f"--resume {ckpt}: --out {out} already holds a run ({LAST}); give an empty "
                f"--out to continue {source} there, or --out {source}"
            )
        saved = read_config(source)
        _check_kind(saved, kind, source)
        if not D.env_info().is_main:
            # under torchrun rank 0 copies; the others read the same config from the source
            # (and, if holdout.json is not there yet, draw the same split from the same data)
            return saved
        prepare_output_dir(out, "--out")
        for name in CONTINUED_FILES:
            if (source / name).is_file():
                write_text(out / name, (source / name).read_text(encoding="utf-8"))
    saved = read_config(out)
    _check_kind(saved, kind, out)
    return saved


def _check_kind(saved: dict, kind: str | None, where: Path) -> None:
    if kind is not None and saved.get("kind", kind) != kind:
        raise SlimpError(
            f"--resume: {where} was written by `slimp {saved.get('kind')}`; resume it with "
            f"`slimp {saved.get('kind')}`"
        )


def load_resume_state(out: Path, resume: bool | str | Path | None) -> dict:
    """The checkpoint a run resumes from (`resume_checkpoint`), loaded; its path is kept
    under `resumed_from` (the "resumed from step N" notice)."""
    path = resume_checkpoint(Path(out), resume)
    if path is None:
        raise SlimpError("internal: load_resume_state without --resume")
    state = load_checkpoint(path)
    state["resumed_from"] = str(path)
    return state


@dataclass
class TrainingPatients:
    """Which patients train and which are held out, and the schema the model encodes with."""

    holdout: Holdout
    use: list[int]  # ShardIndex positions of the training patients (streamed: index entries)
    validation: list[int]  # positions of the held-out patients
    schema: ResolvedSchema  # numerical statistics from the training patients alone
    statistics_from: str = "training patients"


def split_patients(
    index, train: TrainConfig, *, run_dir: Path, saved: dict | None, info: D.DistInfo
) -> TrainingPatients:
    """Draw (or, on resume, re-read) the run's held-out patients; write holdout.json.

    The split is drawn once, from the data being trained on (`adapt` draws its own on the
    target), and `--resume` re-reads it, so a run never trains on a held-out patient.
    """
    streamed = isinstance(index, ShardSource)
    if streamed:  # index.json (or one JSON-only pass): ids and malignancy, no images
        entries = index.patient_entries()
        ids, positive = [e.patient_id for e in entries], [e.positive for e in entries]
    else:
        ids, positive = patient_positives(index)
    if saved is not None and (run_dir / HOLDOUT).is_file():
        holdout = read_holdout(run_dir)
    elif train.holdout == "official":
        if streamed:
            raise SlimpError(
                "--holdout official reads each lesion's official split from local shards; "
                "give the shard folder instead of --shard-url"
            )
        holdout = official_holdout(
            ids, patient_official_splits(index), seed=train.holdout_seed, where=str(index.data_dir)
        )
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_holdout(run_dir, holdout)
    else:
        holdout = choose_holdout(ids, positive, fraction=train.holdout, seed=train.holdout_seed)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_holdout(run_dir, holdout)
    if not holdout.patient_ids:
        notice(
            "--holdout 0: every patient is trained on; probe/retrieve numbers on this data "
            "will be on patients the model has seen (they say so)",
            info,
        )
    use = [i for i, pid in enumerate(ids) if pid not in holdout]
    validation = [i for i, pid in enumerate(ids) if pid in holdout]
    schema, statistics = index.schema, "all patients"
    if validation and streamed and all(e.moments is not None for e in entries):
        # index.json carries per-patient moments: the training patients' statistics, pooled
        # (equal to the local path's to float rounding), without reading a tar.
        statistics = "training patients"
        schema = schema.with_moments([entries[i].moments for i in use])
    elif validation and streamed:
        # NOTE[DIFF]: an index without moments (none is written so since they exist): the
        # stream has read no patient's fields yet, so schema.json's (all patients) serve.
        statistics = STATISTICS_NOTE
    elif validation:
        statistics = "training patients"
        patients, lesions = [], []
        for i in use:
            rec = index.patient(i)
            patients.append(patient_record(rec.fields, rec.derived))
            lesions += [les.get("fields") or {} for les in rec.lesions]
        schema = schema.with_statistics(patients, lesions)
    return TrainingPatients(
        holdout=holdout,
        use=use,
        validation=validation,
        schema=schema,
        statistics_from=statistics,
    )


def holdout_record(split: TrainingPatients) -> dict:
    """What config.json says of the held-out patients (the ids are in holdout.json)."""
    h = split.holdout
    return {
        "file": HOLDOUT,
        "fraction": h.fraction,
        "seed": h.seed,
        "fingerprint": h.fingerprint,
        "patients_held_out": len(split.validation),
        "patients_trained": len(split.use),
        "statistics_from": split.statistics_from,
    }


def data_record(data_dir: Path, index) -> dict:
    """config.json's `data`: the folder, its manifest's sha256 and, when the shards were
    streamed, the URL template they came from (`shard_url`)."""
    manifest = data_dir / "manifest.json"
    record = {
        "dir": str(data_dir.resolve()),
        "manifest_sha256": sha256_file(manifest),
        "schema_fingerprint": index.schema.fingerprint(),
        "patients": len(index),
        "lesions": index.manifest.get("counts", {}).get("lesions"),
    }
    if isinstance(index, ShardSource):
        record["shard_url"] = index.template
    return record


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


def open_training_data(data: Path, shard_url: str | None = None, info: D.DistInfo | None = None):
    """The ShardIndex of `data` or, with `shard_url`, its `ShardSource` with the patient index
    read (index.json, or one JSON-only streaming pass, noticed); SlimpError when it holds no
    patients."""
    if shard_url is None:
        index = ShardIndex.open(data)
    else:
        index = ShardSource.open(data, shard_url)
        index.patient_entries(note=lambda message: notice(message, info))
    if len(index) == 0:
        raise SlimpError(f"{data}: the shards hold no patients; ingest a dataset with images")
    return index
