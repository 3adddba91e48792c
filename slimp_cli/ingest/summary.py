"""What ingest learns from the rows it writes, gathered patient by patient as they are written.

The resolved schema (missing rates, mean/std, vocabularies), the manifest's counts, the
modality summary and index.json come from here, so the pipeline keeps no list of written
lesion dicts: lesion ids are counted in the row store, numerical values wait in scratch files
(the exact two-pass mean/std of `schema.numeric_stats`).
"""

from __future__ import annotations

import json
import tempfile
import textwrap
from array import array
from collections.abc import Sequence

from ..data.schema import category_key, numeric_stats, patient_moments
from .rowstore import DiskSet


class FeatureSummary:
    """Missing count and the statistics of one feature, fed value by value.

    A numerical feature's present values go to a scratch file in `folder` (8 bytes each), read
    back once for the exact two-pass mean/std of `schema.numeric_stats`."""

    FLUSH = 8192  # values buffered before they are appended to the scratch file

    def __init__(self, feature: dict, folder: str | None = None) -> None:
        self.name, self.type = feature["name"], feature["type"]
        self.n = self.missing = 0
        self.numbers = array("d")
        self._spill = (
            tempfile.TemporaryFile(dir=folder, prefix=".slimp-values-")
            if self.type == "numerical"
            else None
        )
        self.vocab: set[str] = set()

    def add(self, value) -> None:
        self.n += 1
        if value is None:
            self.missing += 1
        elif self.type == "numerical":
            self.numbers.append(float(value))
            if len(self.numbers) >= self.FLUSH:
                self.numbers.tofile(self._spill)
                del self.numbers[:]
        elif self.type != "boolean":
            self.vocab.add(category_key(value))

    def _all_numbers(self) -> array:
        values = array("d")
        self._spill.flush()
        size = self._spill.seek(0, 2) // values.itemsize
        self._spill.seek(0)
        values.fromfile(self._spill, size)
        values.extend(self.numbers)
        return values

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()

    def resolved(self) -> dict:
        """Resolved feature: missing rate, and mean/std (numerical) or sorted vocabulary."""
        out = {
            "name": self.name,
            "type": self.type,
            # written as before the streaming rewrite, so schema.json stays byte-identical
            "missing_rate": round(1 - (self.n - self.missing) / self.n, 6) if self.n else 1.0,
        }
        if self.type == "numerical":
            out["mean"], out["std"] = numeric_stats(self._all_numbers())
        elif self.type == "boolean":
            out["vocab"] = ["false", "true"]
        else:
            out["vocab"] = sorted(self.vocab)
        return out


class WrittenSummary:
    """Everything the schema, manifest and index need about the written patients."""

    def __init__(
        self,
        *,
        patient_features: Sequence[dict],
        lesion_features: Sequence[dict],
        derived: Sequence[dict],
        modalities: Sequence[str],
        folder: str | None = None,
    ) -> None:
        self.lesion_ids = DiskSet(folder)  # distinct lesion ids, counted on disk
        self.levels = {  # STAT_LEVELS -> features: index.json's per-patient moments
            "patient_features": list(patient_features),
            "derived_patient_features": list(derived),
            "lesion_features": list(lesion_features),
        }
        self.patient = [FeatureSummary(f, folder) for f in patient_features]
        self.lesion = [FeatureSummary(f, folder) for f in lesion_features]
        self.derived = [FeatureSummary(f, folder) for f in derived]
        self.declared = list(modalities)
        self.patients = self.lesions = 0
        self.labels: dict[str, int] = {}
        self.malignancy = {1: 0, 0: 0, -1: 0}
        self.malignant_labels: set[str] = set()
        self.classes: set[str] = set()
        self.modality_images = dict.fromkeys(self.declared, 0)
        self.lesions_with_modalities = 0
        self.missing_modalities: list[dict] = []
        # index.json's rows, one JSON line per patient in shard order, kept on disk
        self.index = tempfile.TemporaryFile(
            "w+", dir=folder, prefix=".slimp-index-", encoding="utf-8"
        )

    def add(self, key: str, shard: str, patient: dict, lesions: list[dict]) -> None:
        """One written patient (patient.json) and its lesion entries (lesions.json)."""
        self.patients += 1
        for f in self.patient:
            f.add(patient["fields"].get(f.name))
        for f in self.derived:
            f.add(patient["derived"].get(f.name))
        for e in lesions:
            self.lesions += 1
            for f in self.lesion:
                f.add(e["fields"].get(f.name))
            label = e["label"]
            self.labels[label if label is not None else "(none)"] = (
                self.labels.get(label if label is not None else "(none)", 0) + 1
            )
            if label is not None:
                self.classes.add(label)
                if e["malignant"] == 1:
                    self.malignant_labels.add(label)
            self.malignancy[e["malignant"]] += 1
            self.lesion_ids.add(e["lesion_id"])
        if self.declared:
            self._add_modalities(lesions)
        row = {
            "key": key,
            "patient_id": patient["patient_id"],
            "shard": shard,
            "images": len(lesions),
            "malignant": sum(e["malignant"] == 1 for e in lesions),
            # streaming pools these into the training patients' statistics
            "moments": patient_moments(
                self.levels, patient["fields"], patient["derived"], [e["fields"] for e in lesions]
            ),
        }
        self.index.write(json.dumps(row, ensure_ascii=False) + "\n")

    def write_index(self, handle) -> None:
        """index.json to `handle`: what `paths.write_json` would write of {"format", "version",
        "patients": rows}, streamed from the scratch file (sorted keys, indent 2)."""
        handle.write('{\n  "format": "slimp-index",\n  "patients": [')
        self.index.seek(0)
        for i, line in enumerate(self.index):
            text = json.dumps(json.loads(line), indent=2, sort_keys=True, ensure_ascii=False)
            handle.write(("," if i else "") + "\n" + textwrap.indent(text, "    "))
        handle.write('\n  ],\n  "version": 1\n}\n')

    def _add_modalities(self, lesions: list[dict]) -> None:
        # A lesion id is unique in the dataset, so all its images belong to this patient.
        have: dict[str, set] = {}
        first_row: dict[str, int] = {}
        for e in lesions:
            have.setdefault(e["lesion_id"], set())
            first_row.setdefault(e["lesion_id"], e["row"])
            if e.get("modality") is not None:
                have[e["lesion_id"]].add(e["modality"])
                self.modality_images[e["modality"]] = self.modality_images.get(e["modality"], 0) + 1
        for lid, got in have.items():
            lacking = [m for m in self.declared if m not in got]
            if lacking:
                self.missing_modalities.append(
                    {"lesion_id": lid, "row": first_row[lid], "missing": lacking}
                )
            else:
                self.lesions_with_modalities += 1

    def modality_summary(self) -> dict | None:
        """Images per modality and the lesions that lack a declared modality (None: none
        declared): {"declared", "images", "lesions_complete", "lesions_missing", "missing"}."""
        if not self.declared:
            return None
        per_modality = {
            m: sum(m in e["missing"] for e in self.missing_modalities) for m in self.declared
        }
        return {
            "declared": list(self.declared),
            "images": self.modality_images,
            "lesions_complete": self.lesions_with_modalities,
            "lesions_missing": {m: n for m, n in per_modality.items() if n},
            "missing": self.missing_modalities,
        }

    def counts(self) -> dict:
        """The lesion counts of manifest.json (`counts`, less the row and skip counts)."""
        return {
            "patients": self.patients,
            "lesions": self.lesions,
            # Lesion ids are unique across patients (conflicting rows were skipped).
            "unique_lesion_ids": self.lesion_ids.size,
            "images": self.lesions,
            "labels": dict(sorted(self.labels.items())),
            "malignant": self.malignancy[1],
            "benign": self.malignancy[0],
            "malignancy_unknown": self.malignancy[-1],
        }

    def close(self) -> None:
        for f in [*self.patient, *self.lesion, *self.derived]:
            f.close()
        self.lesion_ids.close()
        self.index.close()
