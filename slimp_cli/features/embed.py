"""`slimp embed`: frozen-encoder features of every lesion into an HDF5 feature store.

Streaming: lesions are decoded by a DataLoader in fixed order and written in chunks, so memory
depends on the batch size, never on the number of lesions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..core.devices import resolve_device
from ..core.errors import SlimpError
from ..core.paths import prepare_output_file
from ..data import decode as device_decode
from ..data.decode import check_decode
from ..data.schema import encode_raw, raw_columns
from ..data.shard_stream import VERIFY_MESSAGE, ShardSource, check_template
from ..data.shards import Case, ShardIndex, case_index
from ..data.transforms import Preprocess
from ..models import patient_record
from ..models.runs import load_run
from .plan import (
    data_record,
    finish_store,
    has_official_split,
    lesion_rows,
    raw_feature_levels,
    store_plan,
)
from .store import FeatureStore, FeatureStoreWriter, check_store_destination


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
    through a URL template (`{name}` = each shard's file name; `features/embed_streamed.py`): the same
    store, rows in the same order. `decode` "gpu": JPEGs decoded and resized on the CUDA
    device (`data/decode.py`; local shards of SLIMP runs).
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
        from .embed_streamed import embed_streamed

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
