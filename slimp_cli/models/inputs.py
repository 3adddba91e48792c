"""Which metadata records feed which encoder: decided once, by the model, for every variant.

`MetadataInputs` is small and picklable, so DataLoader workers (training) and the store writer
(`embed`) encode records exactly as the model's encoders were built, without knowing variants:
- nested: lesion encoder <- each lesion's own fields; patient encoder <- the patient's fields
  plus derived ones (n_lesions);
- flat: one encoder <- the patient's fields merged into every lesion's row;
- image: no metadata encoder (and two augmented views per image for SimCLR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.errors import SlimpError
from ..data.schema import ResolvedSchema, TabularBatch, encode_tabular


@dataclass(frozen=True)
class MetadataInputs:
    """The feature lists of a model's tabular encoders and how records are routed to them."""

    variant: str  # "nested" | "flat" | "image"
    lesion_features: list[dict] | None  # lesion-encoder features (flat: patient + lesion)
    patient_features: list[dict] | None  # patient-encoder features (nested only)

    @classmethod
    def build(cls, variant: str, schema: ResolvedSchema | None) -> MetadataInputs:
        """The inputs of a `variant` model built on `schema` (see `tabular_feature_lists`)."""
        return cls(variant, *tabular_feature_lists(variant, schema))

    @property
    def levels(self) -> tuple[str, ...]:
        """The feature levels the model produces: what `embed` writes."""
        if self.variant == "nested":
            return ("image", "lesion", "patient")
        if self.variant == "flat":
            return ("image", "lesion")
        return ("image",)

    @property
    def two_views(self) -> bool:
        """SimCLR (image variant) trains on two augmented views of every image."""
        return self.variant == "image"

    def lesion_tab(
        self, patient_records: Sequence[dict], lesion_records: Sequence[dict]
    ) -> TabularBatch | None:
        """Lesion-encoder input over L lesions; `patient_records[i]` is lesion i's patient."""
        if self.lesion_features is None:
            return None
        if self.variant == "flat":
            rows = [{**p, **les} for p, les in zip(patient_records, lesion_records, strict=True)]
        else:
            rows = list(lesion_records)
        return encode_tabular(self.lesion_features, rows)

    def patient_tab(self, patient_records: Sequence[dict]) -> TabularBatch | None:
        """Patient-encoder input over the given patient records (nested only, else None)."""
        if self.patient_features is None:
            return None
        return encode_tabular(self.patient_features, list(patient_records))


def tabular_feature_lists(
    variant: str, schema: ResolvedSchema | None
) -> tuple[list[dict] | None, list[dict] | None]:
    """(lesion-encoder features, patient-encoder features) of `variant` on `schema`.

    None means "no such encoder". Raises SlimpError when the variant cannot be built: `nested`
    without patient features (the caller, not this function, decides to fall back to `flat`),
    or a metadata variant on a schema without any feature.
    """
    if variant == "image":
        return None, None
    if schema is None:
        raise SlimpError(f"the {variant} variant needs a resolved schema (schema.json)")
    if variant == "flat":
        if not schema.flat_features:
            raise SlimpError(
                f"dataset '{schema.name}' has no metadata features; use --variant image"
            )
        return list(schema.flat_features), None
    if variant == "nested":
        if not schema.has_patient_features:
            raise SlimpError(
                f"dataset '{schema.name}' has no patient-level features; the nested variant needs "
                "them (use --variant flat)"
            )
        if not schema.lesion_features:
            raise SlimpError(
                f"dataset '{schema.name}' has no lesion-level features; the nested variant needs "
                "them (use --variant flat)"
            )
        return list(schema.lesion_features), list(schema.patient_all)
    raise SlimpError(f"unknown variant '{variant}'; choose one of nested, flat, image")


def patient_record(fields: dict | None, derived: dict | None) -> dict:
    """A patient's raw fields and derived fields (n_lesions) as one record."""
    return {**(fields or {}), **(derived or {})}
