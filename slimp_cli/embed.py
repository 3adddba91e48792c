"""`slimp embed`: frozen-encoder features of every lesion into an HDF5 feature store.

Streaming: lesions are decoded by a DataLoader in fixed order and written in chunks, so memory
depends on the batch size, never on the number of lesions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import decode as device_decode
from .decode import check_decode
from .devices import resolve_device
from .errors import SlimpError
from .holdout import Holdout, read_holdout
from .models import patient_record
from .paths import prepare_output_file, read_json
from .runs import check_schema_compatible, load_run, sha256_file
from .schema import encode_raw, raw_columns
from .shards import Case, ShardIndex, case_index
from .store import FeatureStore, FeatureStoreWriter, check_store_destination
from .stream import VERIFY_MESSAGE, ShardSource, check_template
from .transforms import Preprocess


class LesionImages(torch.utils.data.Dataset):
    """Map-style dataset over (patient, lesion) pairs in shard order: item -> image tensor."""

    def __init__(
        self,
        data_dir: Path,
        pairs: list[tuple[int, int]],
        preprocess: Preprocess,
        decode: str = "cpu",
    ) -> None:
        self.data_dir = data_dir
        self.pairs = pairs
        self.preprocess = preprocess
        self.decode = decode  # "gpu": items are the encoded bytes (decode.eval_images)
        self._index: ShardIndex | None = None  # opened lazily: one per DataLoader worker

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._index is None:
            self._index = ShardIndex.open(self.data_dir)
        p, j = self.pairs[i]
        rec = self._index.patient(p)
        where = f"{self.data_dir} patient {rec.patient_id} lesion {rec.lesions[j]['lesion_id']}"
        if self.decode == "gpu":
            return device_decode.encoded(rec.read_image(j))
        return self.preprocess.load_uint8(rec.read_image(j), where=where)  # normalised on device


def embed(
    checkpoint: str | Path,
    data_dir: str | Path,
    out: str | Path,
    *,
    batch_size: int = 64,
    device: str = "auto",
    image_only: bool = False,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    verify: bool = False,
    shard_url: str | None = None,
    decode: str = "cpu",
) -> Path:
    """Embed every lesion of `data_dir` with the model of `checkpoint`; write the store `out`.

    Features written: image (all variants), lesion and patient (nested), lesion (flat: its single
    tabular encoder over patient+lesion metadata). `image_only` writes image features alone, for
    data whose columns the model was not built for (the extrapolation target). `raw/` always holds
    the data's own metadata encoded for baselines. `progress(done, total)` is called per batch.
    An existing `out` is replaced only with `overwrite` (checked before any work); `verify`
    checks every shard's sha256 against the manifest first. `shard_url` streams the shards
    through a URL template (`{name}` = each shard's file name; `embed_stream.py`): the same
    store, rows in the same order. `decode` "gpu": JPEGs decoded and resized on the CUDA
    device (`decode.py`; local shards of SLIMP runs).
    """
    data_dir, out = Path(data_dir), Path(out)
    if batch_size < 1:
        raise SlimpError(f"--batch-size must be >= 1 (got {batch_size})")
    if workers < 0:
        raise SlimpError(f"--workers must be >= 0 (got {workers})")
    if shard_url is not None:
        check_template(shard_url)
        if verify:
            raise SlimpError(VERIFY_MESSAGE)
    prepare_output_file(out, "--out")  # before any computing: the folder exists
    check_store_destination(out, overwrite=overwrite)  # and no store is replaced unasked
    dev = resolve_device(device)
    check_decode(decode, dev)
    if decode == "gpu" and shard_url is not None:
        raise SlimpError("--decode gpu reads local shards; use --decode cpu with --shard-url")
    run = load_run(checkpoint, device=dev)
    if shard_url is not None:
        from .embed_stream import embed_streamed

        source = ShardSource.open(data_dir, shard_url)
        return embed_streamed(
            run,
            source,
            out,
            image_only=image_only,
            batch_size=batch_size,
            device=dev,
            workers=workers,
            progress=progress,
            overwrite=overwrite,
        )
    index = ShardIndex.open(data_dir, verify=verify)
    if getattr(run.model.inputs, "unit", "patient") == "case":  # SM3: one row per case
        if decode == "gpu":
            raise SlimpError("--decode gpu embeds SLIMP runs; use --decode cpu with SM3 runs")
        return embed_cases(
            run,
            index,
            data_dir,
            out,
            batch_size=batch_size,
            device=dev,
            workers=workers,
            progress=progress,
            overwrite=overwrite,
        )
    plan = store_plan(run, index.schema, data_dir, image_only)
    pairs = [(p, j) for p in range(len(index)) for j in range(len(index.patient(p).lesions))]
    if not pairs:
        raise SlimpError(f"{data_dir}: no lesions to embed")
    manifest_sha, sides, holdout = data_record(run, data_dir, index, [p for p, _ in pairs])
    config = plan.store_config(manifest_sha, sides)
    loader = torch.utils.data.DataLoader(
        LesionImages(data_dir, pairs, run.preprocess, decode),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
        # --decode gpu: a list of byte tensors per batch (their lengths differ)
        **({"collate_fn": list} if decode == "gpu" else {}),
    )
    model = run.model
    writer = FeatureStoreWriter(out, n=len(pairs), overwrite=overwrite, **plan.writer(config))
    with writer, torch.no_grad():
        start = 0
        for images in loader:
            if decode == "gpu":
                images = device_decode.eval_images(
                    images, img_size=run.preprocess.img_size, device=dev
                )
            chunk = pairs[start : start + len(images)]
            start += len(images)
            recs = [index.patient(p) for p, _ in chunk]
            lesions = [rec.lesions[j] for rec, (_, j) in zip(recs, chunk)]
            patients = [patient_record(rec.fields, rec.derived) for rec in recs]
            writer.append(
                **lesion_rows(
                    model,
                    plan,
                    images=images,
                    patient_ids=[rec.patient_id for rec in recs],
                    patients=patients,
                    lesions=lesions,
                    device=dev,
                )
            )
            if progress is not None:
                progress(start, len(pairs))
        finish_store(writer, model, plan, sides, holdout)
    return out


@dataclass
class StorePlan:
    """What a SLIMP store of some data holds: the feature levels, the raw metadata levels,
    the classes, and the store's config.json (its data part filled per store)."""

    levels: tuple[str, ...]
    dims: dict[str, int]
    raw_levels: dict[str, list[dict]]
    classes: list[str]
    variant: str
    schema: dict
    config: dict
    official_split: bool = False  # the data's lesions carry their official split

    @property
    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def store_config(self, manifest_sha: str | None, sides, **extra) -> dict:
        return {
            **self.config,
            "manifest_sha256": manifest_sha,
            "seen_in_training": sides is not None,
            **extra,
        }

    def writer(self, config: dict) -> dict:
        """`FeatureStoreWriter` arguments but the path and n."""
        return dict(
            dims=self.dims,
            config=config,
            schema=self.schema,
            classes=self.classes,
            variant=self.variant,
            raw_columns={k: raw_columns(v) for k, v in self.raw_levels.items()},
            official_split=self.official_split,
        )


def has_official_split(data_dir: Path) -> bool:
    """Whether the ingested data records a fixed split per lesion (manifest.json's
    `counts.official_split`, e.g. Derm7pt with its index files): the store then gets
    `official_split`."""
    manifest = Path(data_dir) / "manifest.json"
    counts = read_json(manifest).get("counts", {}) if manifest.is_file() else {}
    return bool(counts.get("official_split"))


def store_plan(run, data_schema, data_dir: Path, image_only: bool) -> StorePlan:
    """The StorePlan of `run`'s model on data of `data_schema` (its schema checked against the
    model's, unless image features alone are written)."""
    model, model_schema = run.model, run.schema
    variant = model.config.variant
    if not image_only and variant != "image":
        check_schema_compatible(
            model_schema, data_schema, model_where=str(run.run_dir), data_where=str(data_dir)
        )
    # Exactly the feature levels this model produces (image only with --image-only).
    levels = ("image",) if image_only else tuple(model.inputs.levels)
    return StorePlan(
        levels=levels,
        dims={k: model.feature_dims[k] for k in levels},
        raw_levels=raw_feature_levels(data_schema),
        classes=list(data_schema.classes),
        variant="image" if image_only else variant,
        schema=data_schema.to_dict(),
        config={
            "model": model.config.to_dict(),
            "variant": variant,
            "image_only": image_only,
            "checkpoint": str(run.checkpoint),
            "checkpoint_sha256": run.sha256,
            "preprocess": run.preprocess.to_dict(),
            "data": str(data_dir),
            "train_schema_fingerprint": model_schema.fingerprint() if model_schema else None,
        },
        official_split=has_official_split(data_dir),
    )


def finish_store(writer, model, plan: StorePlan, sides, holdout) -> None:
    """The rows' train/holdout sides (the run's training data only) and the phenotype layer
    (models with patient features)."""
    if sides is not None:
        writer.set_split(sides, fingerprint=holdout.fingerprint, fraction=holdout.fraction)
    if "patient" in plan.levels:
        layer = model.phenotype_layer
        writer.set_phenotype(
            layer.weight.detach().float().cpu().numpy(),
            layer.bias.detach().float().cpu().numpy(),
        )


def lesion_rows(
    model,
    plan: StorePlan,
    *,
    images: torch.Tensor,
    patient_ids: list[str],
    patients: list[dict],
    lesions: list[dict],
    device: torch.device,
) -> dict:
    """The store columns (`FeatureStoreWriter.append`'s arguments) of b lesion rows: features
    of the plan's levels (bf16 autocast on CUDA), raw metadata, ids, labels. `images`
    [b, 3, S, S] uint8 (`Preprocess.load_uint8`); `patients` the rows' patient records
    (fields + derived), `lesions` their lesions.json entries."""
    inputs, levels, class_index = model.inputs, plan.levels, plan.class_index
    lesion_fields = [les["fields"] for les in lesions]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        feats = {"image": model.encode_image(images.to(device))}
        if "patient" in levels:
            feats["patient"] = model.encode_patient(inputs.patient_tab(patients).to(device))
        if "lesion" in levels:
            feats["lesion"] = model.encode_lesion(
                inputs.lesion_tab(patients, lesion_fields).to(device)
            )
    raw = {
        level: encode_raw(spec, lesion_fields if level == "lesion" else patients)
        for level, spec in plan.raw_levels.items()
    }
    official = [les.get("official_split") for les in lesions] if plan.official_split else None
    return dict(
        lesion_id=[les["lesion_id"] for les in lesions],
        patient_id=list(patient_ids),
        label=[class_index.get(les.get("label"), -1) for les in lesions],
        malignant=[int(les.get("malignant", -1)) for les in lesions],
        features={k: v.float().cpu().numpy() for k, v in feats.items()},
        raw=raw,
        official_split=official,
    )


def raw_feature_levels(schema) -> dict[str, list[dict]]:
    """The data's own metadata levels (its schema, not the model's) stored in raw/ for the
    metadata-only baselines; a level without columns is left out."""
    levels = {"lesion": schema.lesion_features}
    if schema.has_patient_features:
        levels["patient"] = schema.patient_all
    return {k: v for k, v in levels.items() if v}


def data_record(run, data_dir: Path, index: ShardIndex, patients: list[int]):
    """(manifest sha256, per-row train/holdout sides or None, the run's Holdout or None) of
    rows whose patients are `patients` (ShardIndex positions, one per row)."""
    manifest = Path(data_dir) / "manifest.json"
    manifest_sha = sha256_file(manifest) if manifest.is_file() else None
    ids = [index.patient(p).patient_id for p in patients]
    return (manifest_sha, *training_sides(run, manifest_sha, ids))


def training_sides(run, manifest_sha: str | None, patient_ids: list[str]):
    """(per-row "train"/"holdout", the run's Holdout) when the data is what the run trained on
    (same manifest sha256); (None, None) for other data, none of whose rows were trained on.

    A run without holdout.json (trained on every patient) marks every row "train"."""
    trained_on = run.config.get("data", {}).get("manifest_sha256")
    if manifest_sha is None or manifest_sha != trained_on:
        return None, None
    holdout = read_holdout(run.run_dir) or Holdout(
        patient_ids=(), fraction=0.0, seed=0, n_patients=len(set(patient_ids))
    )
    return ["holdout" if pid in holdout else "train" for pid in patient_ids], holdout


class CaseImages(torch.utils.data.Dataset):
    """Map-style dataset of cases (`shards.case_index`): item -> evaluation view per modality.

    Returns (images [M, 3, S, S] with zeros where the case lacks a modality, present [M] bool).
    """

    def __init__(
        self, data_dir: Path, cases: list[Case], modalities: tuple[str, ...], preprocess: Preprocess
    ) -> None:
        self.data_dir = data_dir
        self.cases = cases
        self.modalities = modalities
        self.preprocess = preprocess
        self._index: ShardIndex | None = None

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._index is None:
            self._index = ShardIndex.open(self.data_dir)
        case = self.cases[i]
        rec = self._index.patient(case.patient)
        s = self.preprocess.img_size
        images = torch.zeros(len(self.modalities), 3, s, s)
        present = torch.zeros(len(self.modalities), dtype=torch.bool)
        for m, modality in enumerate(self.modalities):
            j = case.image(modality)
            if j is not None:
                where = f"{self.data_dir} patient {rec.patient_id} lesion {case.lesion_id}"
                images[m] = self.preprocess.load(rec.read_image(j), where=f"{where} ({modality})")
                present[m] = True
        return images, present


def embed_cases(
    run,
    index: ShardIndex,
    data_dir: Path,
    out: Path,
    *,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """An SM3 model's store: one row per case (lesion) with its modalities side by side.

    Levels (`model.inputs.levels`): `derm`, `clinic` (branch features; zeros where the case lacks
    that modality), `image` (their concatenation), `derm_mm`/`clinic_mm` (cross-modal embeddings)
    and, after stage 2, `labels` (the relation-refined label embeddings). The store's config
    `sm3` names the stage and `probe_features`, the level the paper's Table II probes for it:
    `image` after stage 1 (MMSSL rows), `labels` after stage 2 (MLSSL rows: the classifier the
    paper initialises from the SM3 weights reads them, Sec. III-F). The per-row `modalities`
    dataset says which images exist.
    Label, malignancy and raw metadata come from the case's first image entry (a lesion's
    images share them).
    """
    model = run.model
    inputs = model.inputs
    modalities = tuple(inputs.modalities)
    cases = case_index(index, modalities)
    data_schema = index.schema
    levels = inputs.levels
    dims = {k: model.feature_dims[k] for k in levels}
    raw_levels = raw_feature_levels(data_schema)
    classes = data_schema.classes
    class_index = {c: i for i, c in enumerate(classes)}
    manifest_sha, sides, holdout = data_record(run, data_dir, index, [c.patient for c in cases])
    official = has_official_split(data_dir)
    store_config = {
        "model": model.config.to_dict(),
        "variant": "sm3",
        "unit": "case",
        "image_only": False,
        "checkpoint": str(run.checkpoint),
        "checkpoint_sha256": run.sha256,
        "preprocess": run.preprocess.to_dict(),
        "data": str(data_dir),
        "manifest_sha256": manifest_sha,
        "seen_in_training": sides is not None,
        "train_schema_fingerprint": None,
        # NOTE[DIFF]: the official MLSSL evaluation fine-tunes p_k and W with the classifier
        # (mlc_eval.py --finetune projector); a store-based probe reads them frozen.
        "sm3": {
            "stage": "multilabel" if inputs.multilabel else "multimodal",
            "probe_features": "labels" if inputs.multilabel else "image",
        },
    }
    loader = torch.utils.data.DataLoader(
        CaseImages(data_dir, cases, modalities, run.preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
    )
    use_amp = device.type == "cuda"
    with (
        FeatureStoreWriter(
            out,
            n=len(cases),
            dims=dims,
            config=store_config,
            schema=data_schema.to_dict(),
            classes=classes,
            variant="sm3",
            raw_columns={k: raw_columns(v) for k, v in raw_levels.items()},
            modalities=modalities,
            official_split=official,
            overwrite=overwrite,
        ) as writer,
        torch.no_grad(),
    ):
        start = 0
        for images, present in loader:
            chunk = cases[start : start + len(images)]
            start += len(images)
            recs = [index.patient(c.patient) for c in chunk]
            first = [rec.lesions[c.images[0][1]] for rec, c in zip(recs, chunk)]
            has = [present[:, m] for m in range(len(modalities))]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                feats = model.encode_cases(
                    images[has[0], 0].to(device),
                    images[has[1], 1].to(device),
                    has[0],
                    has[1],
                    levels,
                )
            patient_rows = [patient_record(rec.fields, rec.derived) for rec in recs]
            lesion_rows = [les["fields"] for les in first]
            raw = {
                level: encode_raw(spec, lesion_rows if level == "lesion" else patient_rows)
                for level, spec in raw_levels.items()
            }
            writer.append(
                lesion_id=[c.lesion_id for c in chunk],
                patient_id=[rec.patient_id for rec in recs],
                label=[class_index.get(les.get("label"), -1) for les in first],
                malignant=[int(les.get("malignant", -1)) for les in first],
                features={k: v.float().cpu().numpy() for k, v in feats.items()},
                raw=raw,
                modalities=present.numpy().astype("int8"),
                official_split=[les.get("official_split") for les in first] if official else None,
            )
            if progress is not None:
                progress(start, len(cases))
        if sides is not None:
            writer.set_split(sides, fingerprint=holdout.fingerprint, fraction=holdout.fraction)
    return out


def store_summary(path: Path) -> dict:
    """Counts and feature dimensions of a store, for the CLI's summary."""
    with FeatureStore.open(path) as st:
        return st.summary()
