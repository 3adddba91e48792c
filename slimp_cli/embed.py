"""`slimp embed`: frozen-encoder features of every lesion into an HDF5 feature store.

Streaming: lesions are decoded by a DataLoader in fixed order and written in chunks, so memory
depends on the batch size, never on the number of lesions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from .errors import SlimpError
from .schema import ResolvedSchema, encode_raw, encode_tabular, raw_columns
from .shards import ShardIndex
from .store import FeatureStoreWriter


def file_sha256(path: Path) -> str:
    """sha256 of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LesionImages(torch.utils.data.Dataset):
    """Map-style dataset over (patient, lesion) pairs in shard order: item -> image tensor."""

    def __init__(self, data_dir: Path, pairs: list[tuple[int, int]], img_size: int) -> None:
        self.data_dir = data_dir
        self.pairs = pairs
        self.img_size = img_size
        self._index: ShardIndex | None = None  # opened lazily: one per DataLoader worker

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> torch.Tensor:
        from .train.data import load_image

        if self._index is None:
            self._index = ShardIndex.open(self.data_dir)
        p, j = self.pairs[i]
        rec = self._index.patient(p)
        where = f"{self.data_dir} patient {rec.patient_id} lesion {rec.lesions[j]['lesion_id']}"
        return load_image(rec.read_image(j), self.img_size, where=where)


def _check_compatible(model_schema: ResolvedSchema, data_schema: ResolvedSchema) -> None:
    """The model's tabular encoders need the same feature names and types as the data."""

    def spec(features: list[dict]) -> list[tuple[str, str]]:
        return [(f["name"], f["type"]) for f in features]

    for level in ("patient_features", "lesion_features"):
        want, got = spec(getattr(model_schema, level)), spec(getattr(data_schema, level))
        if want != got:
            missing = sorted({n for n, _ in want} - {n for n, _ in got})
            extra = sorted({n for n, _ in got} - {n for n, _ in want})
            raise SlimpError(
                f"the checkpoint was trained on other {level.replace('_', ' ')} "
                f"(missing in data: {missing or 'none'}, not in model: {extra or 'none'}); "
                "run slimp adapt on this data first, or embed with --image-only"
            )


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
) -> Path:
    """Embed every lesion of `data_dir` with the model of `checkpoint`; write the store `out`.

    Features written: image (all variants), lesion and patient (nested), lesion (flat: its single
    tabular encoder over patient+lesion metadata). `image_only` writes image features alone, for
    data whose columns the model was not built for (the extrapolation target). `raw/` always holds
    the data's own metadata encoded for baselines. `progress(done, total)` is called per batch.
    """
    from .train.rundir import load_model, resolve_device

    data_dir, out = Path(data_dir), Path(out)
    if batch_size < 1:
        raise SlimpError(f"--batch-size must be >= 1 (got {batch_size})")
    dev = resolve_device(device)
    model, config, model_schema = load_model(checkpoint, device=dev)
    model.eval()
    index = ShardIndex.open(data_dir)
    data_schema = index.schema
    variant = model.config.variant
    if not image_only and variant != "image":
        _check_compatible(model_schema, data_schema)

    # Which features this model can give for this data.
    levels = ["image"]
    if not image_only and variant == "nested":
        levels += ["lesion", "patient"]
    elif not image_only and variant == "flat":
        levels += ["lesion"]
    dims = model.feature_dims
    dims = {k: dims[k] for k in levels}

    # Raw metadata of the data (its own schema), for metadata-only baselines.
    raw_levels = {"lesion": data_schema.lesion_features}
    if data_schema.has_patient_features:
        raw_levels["patient"] = data_schema.patient_all
    raw_cols = {k: raw_columns(v) for k, v in raw_levels.items() if v}

    pairs = [(p, j) for p in range(len(index)) for j in range(len(index.patient(p).lesions))]
    if not pairs:
        raise SlimpError(f"{data_dir}: no lesions to embed")
    classes = data_schema.classes
    class_index = {c: i for i, c in enumerate(classes)}
    manifest = Path(data_dir) / "manifest.json"
    ckpt_path = _checkpoint_file(Path(checkpoint))
    store_config = {
        "model": model.config.to_dict(),
        "variant": variant,
        "image_only": image_only,
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": file_sha256(ckpt_path),
        "data": str(data_dir),
        "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None,
        "train_schema_fingerprint": model_schema.fingerprint(),
    }
    img_size = model.config.img_size
    loader = torch.utils.data.DataLoader(
        LesionImages(data_dir, pairs, img_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
    )
    lesion_feats = (
        model_schema.lesion_features if variant == "nested" else model_schema.flat_features
    )
    use_amp = dev.type == "cuda"
    with FeatureStoreWriter(
        out,
        n=len(pairs),
        dims=dims,
        config=store_config,
        schema=data_schema.to_dict(),
        classes=classes,
        variant="image" if image_only else variant,
        raw_columns=raw_cols,
    ) as writer, torch.no_grad():
        start = 0
        for images in loader:
            chunk = pairs[start : start + len(images)]
            start += len(images)
            recs = [index.patient(p) for p, _ in chunk]
            lesions = [rec.lesions[j] for rec, (_, j) in zip(recs, chunk)]
            patient_rows = [{**rec.fields, **rec.derived} for rec in recs]
            lesion_rows = [les["fields"] for les in lesions]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                feats = {"image": model.encode_image(images.to(dev))}
                if "patient" in levels:
                    feats["patient"] = model.encode_patient(
                        encode_tabular(model_schema.patient_all, patient_rows).to(dev)
                    )
                if "lesion" in levels:
                    rows = (
                        lesion_rows
                        if variant == "nested"
                        else [{**p, **l} for p, l in zip(patient_rows, lesion_rows)]
                    )
                    feats["lesion"] = model.encode_lesion(
                        encode_tabular(lesion_feats, rows).to(dev)
                    )
            raw = {}
            for level, feats_spec in raw_levels.items():
                rows = lesion_rows if level == "lesion" else patient_rows
                raw[level] = encode_raw(feats_spec, rows)
            writer.append(
                lesion_id=[les["lesion_id"] for les in lesions],
                patient_id=[rec.patient_id for rec in recs],
                label=[class_index.get(les.get("label"), -1) for les in lesions],
                malignant=[int(les.get("malignant", -1)) for les in lesions],
                features={k: v.float().cpu().numpy() for k, v in feats.items()},
                raw=raw,
            )
            if progress is not None:
                progress(start, len(pairs))
        if variant == "nested" and not image_only:
            layer = model.phenotype_layer
            writer.set_phenotype(
                layer.weight.detach().float().cpu().numpy(),
                layer.bias.detach().float().cpu().numpy(),
            )
    return out


def _checkpoint_file(path: Path) -> Path:
    if path.is_dir():
        path = path / "checkpoint-last.pt"
    if not path.is_file():
        raise SlimpError(f"{path}: checkpoint not found")
    return path


def store_summary(path: Path) -> dict:
    """Counts and feature dimensions of a store, for the CLI's summary."""
    from .store import FeatureStore

    with FeatureStore.open(path) as st:
        return {
            "path": str(path),
            "lesions": int(st.n),
            "features": {k: int(st.f[f"features/{k}"].shape[1]) for k in st.feature_names},
            "raw": {k: int(st.f[f"raw/{k}"].shape[1]) for k in ("lesion", "patient") if f"raw/{k}" in st.f},
            "config": json.loads(st.f.attrs["config"]),
        }
