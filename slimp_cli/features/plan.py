"""What a store of a run's features on some data holds (`StorePlan`: levels, raw metadata,
classes, config) and how its rows are computed (`lesion_rows`) and finished (train/holdout sides,
phenotype layer): shared by the local embed (features/embed.py), the streamed one (embed_streamed.py) and
any timm encoder's store (timm_encoder.py), so all write the same store for the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.paths import read_json, sha256_file
from ..data.holdout import Holdout, read_holdout
from ..data.schema import encode_raw, raw_columns
from ..data.shards import ShardIndex
from ..models.runs import check_schema_compatible


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
