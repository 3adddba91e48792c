"""What the benchmark reports: models, table sections and their rows, the paper's figures.

Everything the pipeline trains, embeds and probes follows from these lists: a row names a
model and the features, probe and pseudo-metadata it is scored with, and the pipeline computes
what the rows of the sections it runs need. To add a row, add a `Row` to `SECTIONS` (and, for a
new model, a `Model` to `MODELS`: a `train` dict of TrainConfig options over its stage's recipe
gives e.g. a "nested + image SSL" model); to add a table, add a `Section`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALL = ("image", "lesion", "patient")


@dataclass(frozen=True)
class Model:
    """One representation of a target dataset (one store per target and seed).

    `stage` says how the target's store is made:
    - "scratch": pre-trained on the target from random weights (`scratch` recipe);
    - "adapted": pre-trained on SLICE-3D, then `adapt` on the target (`slice3d` + `adapt`);
    - "pretrained": pre-trained on SLICE-3D, the target embedded image-only (no target stage).
    """

    key: str
    name: str
    variant: str  # nested | flat | image
    stage: str  # scratch | adapted | pretrained
    train: dict = field(default_factory=dict)  # TrainConfig options over the stage's recipe

    @property
    def experiment(self) -> str:
        return "scratch" if self.stage == "scratch" else "slice3d"

    @property
    def source(self) -> str:
        """The SLICE-3D run a slice3d model starts from (models sharing it share the run)."""
        extra = "".join(f"-{k}{v}" for k, v in sorted(self.train.items()))
        return f"{self.variant}{extra}"


MODELS: dict[str, Model] = {
    m.key: m
    for m in (
        Model("scratch-nested", "SLIMP nested", "nested", "scratch"),
        Model("scratch-flat", "SLIMP flat", "flat", "scratch"),
        Model("scratch-image", "image-only SimCLR", "image", "scratch"),
        # issue 18: SLIP-style image SSL beside the nested loss (not in the paper)
        Model(
            "scratch-nested-ssl",
            "SLIMP nested + image SSL",
            "nested",
            "scratch",
            train={"image_ssl_weight": 1.0},
        ),
        Model("pre-image", "SimCLR (SLICE-3D)", "image", "pretrained"),
        Model("pre-nested", "Pre-SLIMP", "nested", "pretrained"),
        Model("adapted-nested", "SLIMP_B=4", "nested", "adapted"),
        Model("adapted-flat", "SLIMP_FLAT", "flat", "adapted"),
    )
}
# The metadata-only baselines (`probe --baseline`: raw columns of the same held-out rows).
METADATA = "metadata"


@dataclass(frozen=True)
class Row:
    """One table row: a model's store probed with `features` (None: all the model has) and
    `pseudo` metadata (`extrapolate`), read off the probe JSON's `method` result."""

    model: str  # a MODELS key, or METADATA
    method: str = "linear"  # linear | knn | baseline-logreg | baseline-gbm
    features: tuple[str, ...] | None = None
    pseudo: str | None = None
    label: str | None = None  # the printed model name (default: the model's)
    paper: str | None = None  # a PAPER key: the paper's figure on PAD-UFES-20


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    experiment: str  # scratch | slice3d
    rows: tuple[Row, ...]


def _baselines() -> tuple[Row, ...]:
    return tuple(
        Row(METADATA, method=m, label="metadata only (raw columns)")
        for m in ("baseline-logreg", "baseline-gbm")
    )


def _ablation(model: str, paper_prefix: str | None) -> tuple[Row, ...]:
    feats = (("image",), ("image", "lesion"), ALL)
    return tuple(
        Row(
            model,
            method=m,
            features=f,
            paper=f"{paper_prefix} {m} {'+'.join(f)}" if paper_prefix else None,
        )
        for m in ("linear", "knn")
        for f in feats
    )


SECTIONS: tuple[Section, ...] = (
    Section(
        "T3",
        "Table 3: pre-trained on the target from scratch, linear probe",
        "scratch",
        (
            Row("scratch-nested", paper="T3 nested"),
            Row("scratch-flat", paper="T3 flat"),
            Row("scratch-image"),
            Row("scratch-nested-ssl"),
            *_baselines(),
        ),
    ),
    Section(
        "T3-knn",
        "From scratch, kNN (k = 20)",
        "scratch",
        (Row("scratch-nested", "knn"), Row("scratch-flat", "knn"), Row("scratch-image", "knn")),
    ),
    Section(
        "T3-ablation",
        "From scratch, encoder outputs of the nested model (Table 6's layout), with and without "
        "the image SSL term",
        "scratch",
        _ablation("scratch-nested", None) + _ablation("scratch-nested-ssl", None),
    ),
    Section(
        "T2",
        "Table 2: SLICE-3D pre-training (+ continual pre-training on the target), linear probe",
        "slice3d",
        (
            Row("pre-image", paper="T2 SimCLR"),
            Row("pre-nested", features=("image",), paper="T2 Pre-SLIMP"),
            Row("pre-nested", pseudo="ilp", label="Ret-SLIMP", paper="T2 Ret-SLIMP"),
            Row("adapted-nested", features=("image",), label="SLIMP_IMAGE", paper="T2 IMAGE"),
            Row("adapted-flat", paper="T2 FLAT"),
            Row("adapted-nested", paper="T2 B=4"),
            *_baselines(),
        ),
    ),
    Section(
        "T18",
        "Table 18: kNN (k = 20) after SLICE-3D pre-training",
        "slice3d",
        (
            Row("pre-image", "knn", paper="T18 SimCLR"),
            Row("adapted-flat", "knn", paper="T18 FLAT"),
            Row("adapted-nested", "knn", paper="T18 B=4"),
        ),
    ),
    Section(
        "T6",
        "Table 6: encoder outputs of SLIMP_B=4 (SLICE-3D + continual pre-training)",
        "slice3d",
        _ablation("adapted-nested", "T6"),
    ),
)

# "What the images add" (issue 18): each model's full features, and the raw metadata + them,
# against the metadata-only logistic regression on the same held-out rows (first seed).
IMAGES_ADD = (
    "scratch-nested",
    "scratch-flat",
    "scratch-image",
    "scratch-nested-ssl",
    "adapted-nested",
    "adapted-flat",
)

# Image <-> metadata retrieval (Tables 20/21 on the continual model), per model.
RETRIEVAL: tuple[tuple[str, str | None], ...] = (
    ("scratch-nested", None),
    ("scratch-flat", None),
    ("adapted-nested", "T20/21"),
    ("adapted-flat", None),
)
# Derm7pt's seven-point criteria from image features, per model.
MULTILABEL = ("scratch-flat", "scratch-image")

# The paper's published figures on PAD-UFES-20 (percent for Acc/BA/R@k/mAP, fractions for F1
# and AUC, as printed).
_T6 = "Table 6 (SLIMP B=4: SLICE-3D + continual)"
PAPER: dict[str, dict] = {
    "T3 nested": dict(accuracy=87.4, balanced_accuracy=86.9, auc=0.910, source="Table 3"),
    "T3 flat": dict(accuracy=85.2, balanced_accuracy=84.7, auc=0.902, source="Table 3"),
    "T2 SimCLR": dict(accuracy=70.4, balanced_accuracy=70.5, auc=0.766, source="Table 2"),
    "T2 Pre-SLIMP": dict(accuracy=76.5, balanced_accuracy=76.0, auc=0.781, source="Table 2"),
    "T2 Ret-SLIMP": dict(accuracy=77.0, balanced_accuracy=77.0, auc=0.814, source="Table 2"),
    "T2 IMAGE": dict(accuracy=76.1, balanced_accuracy=75.5, auc=0.807, source="Table 2"),
    "T2 FLAT": dict(accuracy=85.7, balanced_accuracy=85.3, auc=0.906, source="Table 2"),
    "T2 B=4": dict(accuracy=90.9, balanced_accuracy=90.2, auc=0.926, source="Table 2"),
    "T18 SimCLR": dict(accuracy=67.4, source="Table 18"),
    "T18 FLAT": dict(accuracy=81.3, source="Table 18"),
    "T18 B=4": dict(accuracy=93.5, source="Table 18"),
    "T6 linear image": dict(accuracy=76.1, balanced_accuracy=75.5, f1=0.764, auc=0.807, source=_T6),
    "T6 linear image+lesion": dict(
        accuracy=89.6, balanced_accuracy=89.1, f1=0.908, auc=0.908, source=_T6
    ),
    "T6 linear image+lesion+patient": dict(
        accuracy=90.9, balanced_accuracy=90.2, f1=0.921, auc=0.926, source=_T6
    ),
    "T6 knn image": dict(accuracy=74.8, balanced_accuracy=74.6, f1=0.770, auc=0.633, source=_T6),
    "T6 knn image+lesion": dict(
        accuracy=90.0, balanced_accuracy=89.7, f1=0.911, auc=0.865, source=_T6
    ),
    "T6 knn image+lesion+patient": dict(
        accuracy=93.5, balanced_accuracy=93.2, f1=0.942, auc=0.911, source=_T6
    ),
    # Tables 20 / 21: instance-level image <-> metadata retrieval, SLIMP ViT-S
    "T20/21 image_to_lesion": {"R@5": 9.0, "R@10": 14.8, "mAP": 7.9, "source": "Table 20"},
    "T20/21 lesion_to_image": {"R@5": 8.7, "R@10": 16.1, "mAP": 7.6, "source": "Table 21"},
}


def model_features(variant: str, has_patient: bool = True) -> tuple[str, ...]:
    """The features a model of `variant` writes for a target (a nested model adapted to data
    without patient features becomes flat: image + lesion)."""
    if variant == "image":
        return ("image",)
    if variant == "flat" or not has_patient:
        return ("image", "lesion")
    return ALL
