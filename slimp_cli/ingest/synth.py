"""A generated patient cohort whose images are drawn from their metadata.

Written in the `csv` layout (`metadata.csv`, `images/`, `schema.json`), so that
`slimp ingest synth OUT SHARDS` (or `ingest csv ... --schema OUT/schema.json`) reads it.

The metadata -> image mapping is deliberately strong and visually simple, so that a tiny ViT
trained for ~100 steps on 32-48 px images can learn image <-> metadata retrieval:
- patient skin type (fitzpatrick 1-6)  -> background tone (light to dark);
- patient age                           -> number of small dark age spots in the background;
- patient sex                           -> male: a few thin dark hair lines;
- lesion site                           -> background tint and stripe texture orientation;
- lesion diameter_mm                    -> lesion radius;
- lesion colour                         -> lesion colour (six very different colours);
- irregular_border / malignancy         -> wobbly border; malignant lesions get a second,
                                           darker colour blob (multicolour);
- elevation                             -> raised/nodular lesions get a specular highlight.
Some fields are invisible (itch, smoker, family_history), and 3-30% of some fields are missing,
as in real tables. Each patient has 1..10 lesions (geometric), some lesions a second image.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import SlimpError, check_seed

SITES = ("head_neck", "torso", "upper_limb", "lower_limb", "acral")
SITE_P = (0.2, 0.35, 0.2, 0.2, 0.05)
# Per-site background tint (RGB offset) and stripe texture angle (radians).
SITE_TINT = {
    "head_neck": (30, -5, -10),
    "torso": (0, 0, 0),
    "upper_limb": (-10, 20, -10),
    "lower_limb": (-15, -5, 30),
    "acral": (25, 25, -25),
}
SITE_ANGLE = {"head_neck": 0.0, "torso": 0.8, "upper_limb": 1.6, "lower_limb": 2.4, "acral": 0.4}
COLOURS = {
    "tan": (205, 155, 95),
    "brown": (135, 85, 45),
    "dark_brown": (75, 40, 20),
    "black": (25, 22, 25),
    "pink": (230, 110, 135),
    "blue": (60, 80, 165),
}
# Colour probabilities per diagnosis (order of COLOURS): informative but not deterministic.
COLOUR_P = {
    "nevus": (0.4, 0.4, 0.1, 0.0, 0.05, 0.05),
    "seborrheic_keratosis": (0.3, 0.35, 0.3, 0.05, 0.0, 0.0),
    "melanoma": (0.0, 0.1, 0.35, 0.35, 0.0, 0.2),
    "bcc": (0.05, 0.05, 0.05, 0.0, 0.7, 0.15),
}
DIAMETER = {"nevus": (2, 8), "seborrheic_keratosis": (4, 14), "melanoma": (6, 20), "bcc": (3, 12)}
ELEVATIONS = ("flat", "raised", "nodular")
MALIGNANT = ("melanoma", "bcc")
COLUMNS = (
    "patient_id",
    "lesion_id",
    "image",
    "age",
    "sex",
    "fitzpatrick",
    "family_history",
    "smoker",
    "site",
    "diameter_mm",
    "colour",
    "elevation",
    "irregular_border",
    "itch",
    "grew",
    "diagnosis",
    "biopsied",
)
# Fraction of cells left empty per column.
MISSING_RATE = {
    "age": 0.1,
    "sex": 0.03,
    "family_history": 0.3,
    "smoker": 0.2,
    "diameter_mm": 0.15,
    "elevation": 0.1,
    "itch": 0.25,
    "grew": 0.2,
}


@dataclass(frozen=True, kw_only=True)
class SynthResult:
    """What `generate_cohort` wrote."""

    out: Path
    patients: int
    lesions: int
    images: int
    malignant: int


def cohort_schema() -> dict:
    """The dataset schema of a generated cohort (written as OUT/schema.json)."""
    num, cat, boo = "numerical", "categorical", "boolean"
    return {
        "name": "synth",
        "description": "generated cohort (slimp synth): images drawn from their metadata",
        "patient_id": "patient_id",
        "lesion_id": "lesion_id",
        "image": "image",
        "label": "diagnosis",
        "malignant": list(MALIGNANT),
        "patient_features": [
            {"name": n, "type": t}
            for n, t in (
                ("age", num),
                ("sex", cat),
                ("fitzpatrick", num),
                ("family_history", boo),
                ("smoker", boo),
            )
        ],
        "lesion_features": [
            {"name": n, "type": t}
            for n, t in (
                ("site", cat),
                ("diameter_mm", num),
                ("colour", cat),
                ("elevation", cat),
                ("irregular_border", boo),
                ("itch", boo),
                ("grew", boo),
            )
        ],
        "excluded": [
            {"name": "biopsied", "reason": "label leak: every malignant lesion was biopsied"}
        ],
    }


def _patients(rng: np.random.Generator, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        age = int(rng.integers(20, 91))
        fam = bool(rng.random() < 0.2)
        fitz = int(rng.choice(6, p=(0.15, 0.3, 0.25, 0.15, 0.1, 0.05))) + 1
        patient = {
            "patient_id": f"P{i + 1:05d}",
            "age": age,
            "sex": ("female", "male")[int(rng.random() < 0.5)],
            "fitzpatrick": fitz,
            "family_history": fam,
            "smoker": bool(rng.random() < 0.25),
        }
        risk = 0.06 + 0.22 * (age > 60) + 0.12 * fam + 0.05 * (fitz <= 2)
        n_lesions = min(int(rng.geometric(0.4)), 10)
        lesions = []
        for j in range(n_lesions):
            malignant = bool(rng.random() < risk)
            if malignant:
                dx = MALIGNANT[int(rng.random() < 0.4)]
            else:
                dx = (
                    "seborrheic_keratosis"
                    if rng.random() < (0.55 if age > 50 else 0.15)
                    else "nevus"
                )
            lo, hi = DIAMETER[dx]
            lesions.append(
                {
                    "lesion_id": f"{patient['patient_id']}-L{j + 1:02d}",
                    "diagnosis": dx,
                    "site": SITES[int(rng.choice(len(SITES), p=SITE_P))],
                    "diameter_mm": round(float(rng.uniform(lo, hi)), 1),
                    "colour": list(COLOURS)[int(rng.choice(len(COLOURS), p=COLOUR_P[dx]))],
                    "elevation": ELEVATIONS[
                        int(rng.choice(3, p=(0.2, 0.3, 0.5) if dx == "bcc" else (0.6, 0.3, 0.1)))
                    ],
                    "irregular_border": bool(rng.random() < (0.85 if malignant else 0.1)),
                    "itch": bool(rng.random() < 0.15),
                    "grew": bool(rng.random() < (0.7 if malignant else 0.15)),
                    "biopsied": malignant or bool(rng.random() < 0.3),
                    "n_images": 2 if rng.random() < 0.1 else 1,
                }
            )
        rows.append({"patient": patient, "lesions": lesions})
    return rows


def render(patient: dict, lesion: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one lesion image (uint8 [size, size, 3]) from its true (never missing) metadata."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Background: skin tone by Fitzpatrick type, site tint, site-oriented stripes.
    t = (patient["fitzpatrick"] - 1) / 5.0
    base = np.array((238, 212, 190), np.float32) * (1 - t) + np.array((92, 58, 38), np.float32) * t
    base = base + np.array(SITE_TINT[lesion["site"]], np.float32)
    angle = SITE_ANGLE[lesion["site"]]
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi * 4.0)
    img = base[None, None, :] + 10.0 * stripes[..., None]
    # Age spots: more with age.
    half = max(1, round(0.025 * size))
    for _ in range(int(patient["age"]) // 12):  # small square-ish spots, drawn locally (fast)
        cy, cx = (rng.random(2) * size).astype(int)
        img[max(0, cy - half + 1) : cy + half, max(0, cx - half + 1) : cx + half] *= 0.6
    # Hair lines for male patients.
    if patient["sex"] == "male":
        for _ in range(3):
            y0, slope = rng.uniform(0.15, 0.85), rng.uniform(-0.6, 0.6)
            line = np.abs(yy - (y0 + slope * (xx - 0.5))) < max(0.015, 0.6 / size)
            img[line] = img[line] * 0.35
    # Lesion: radius from diameter, wobbly border when irregular.
    cy, cx = 0.5 + rng.uniform(-0.06, 0.06, 2)
    radius = 0.04 + 0.4 * (lesion["diameter_mm"] - 2) / 18
    dy, dx = yy - cy, xx - cx
    dist, theta = np.sqrt(dy**2 + dx**2), np.arctan2(dy, dx)
    wobble = 0.35 if lesion["irregular_border"] else 0.04
    phases = rng.uniform(0, 2 * np.pi, 3)
    edge = radius * (
        1
        + wobble
        * (
            np.sin(3 * theta + phases[0])
            + 0.6 * np.sin(5 * theta + phases[1])
            + 0.4 * np.sin(7 * theta + phases[2])
        )
        / 2.0
    )
    alpha = np.clip((edge - dist) * size + 0.5, 0, 1)[..., None]
    colour = np.array(COLOURS[lesion["colour"]], np.float32)
    img = img * (1 - alpha) + colour * alpha
    if lesion["diagnosis"] in MALIGNANT:  # multicolour: an off-centre darker blob
        oy, ox = rng.uniform(-0.4, 0.4, 2) * radius
        inner = np.clip(
            (0.5 * radius - np.sqrt((dy - oy) ** 2 + (dx - ox) ** 2)) * size + 0.5, 0, 1
        )[..., None]
        img = img * (1 - inner * alpha) + np.array((15, 10, 40), np.float32) * inner * alpha
    if lesion["elevation"] != "flat":  # specular highlight
        hr = radius * (0.2 if lesion["elevation"] == "raised" else 0.35)
        hl = ((dy + radius * 0.3) ** 2 + (dx + radius * 0.3) ** 2) < hr**2
        img[hl] = img[hl] * 0.4 + 255 * 0.6
    img = img + 3.0 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _hide(fields: dict, rng: np.random.Generator) -> dict:
    """A copy with some cells blanked at the rates of MISSING_RATE."""
    return {
        c: (None if c in MISSING_RATE and rng.random() < MISSING_RATE[c] else v)
        for c, v in fields.items()
    }


def _cell(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return "" if value is None else str(value)


def generate_cohort(
    out: str | Path, *, patients: int = 200, seed: int = 0, image_size: int = 64
) -> SynthResult:
    """Write `patients` generated patients to `out` (metadata.csv, images/, schema.json).

    Deterministic for a seed: the same arguments give byte-identical files.
    """
    if patients < 1:
        raise SlimpError(f"--patients must be at least 1 (got {patients})")
    if not 16 <= image_size <= 4096:
        raise SlimpError(f"--image-size must be between 16 and 4096 (got {image_size})")
    check_seed(seed, "--seed")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SlimpError(f"{out}: exists and is not a folder")
    if (out / "metadata.csv").exists():
        raise SlimpError(f"{out}: already holds a cohort (metadata.csv); choose an empty folder")
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, no permission...
        raise SlimpError(f"{out}: cannot create the folder ({exc.strerror})") from None
    rng = np.random.default_rng(seed)
    cohort = _patients(rng, patients)
    missing_rng = np.random.default_rng([seed, 1])
    rows, n_images, n_malignant = [], 0, 0
    for i, entry in enumerate(cohort):
        patient = entry["patient"]
        shown_patient = _hide(patient, missing_rng)  # missing once per patient, not per row
        for j, lesion in enumerate(entry["lesions"]):
            n_malignant += lesion["diagnosis"] in MALIGNANT
            shown_lesion = _hide({c: v for c, v in lesion.items() if c != "n_images"}, missing_rng)
            for k in range(lesion["n_images"]):
                name = f"{lesion['lesion_id']}-{k + 1}.png"
                # Images are drawn from the true values, including those hidden in the table.
                pixels = render(patient, lesion, image_size, np.random.default_rng([seed, i, j, k]))
                Image.fromarray(pixels).save(
                    out / "images" / name, format="PNG", compress_level=1
                )  # fast, still lossless
                n_images += 1
                rows.append({**shown_patient, **shown_lesion, "image": name})
    with open(out / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    (out / "schema.json").write_text(json.dumps(cohort_schema(), indent=2) + "\n")
    n_lesions = sum(len(e["lesions"]) for e in cohort)
    return SynthResult(
        out=out, patients=patients, lesions=n_lesions, images=n_images, malignant=n_malignant
    )


# ------------------------------------------------------------------------------------------
# A SLICE-3D-shaped cohort (the ISIC 2024 training layout), for the paper's pipeline on a CPU
# ------------------------------------------------------------------------------------------
# SLICE-3D's columns in the release's order: patient/lesion features of schemas/slice-3d.json,
# the label, and the columns that schema excludes (label leaks, licence text...), so that the
# real `slice-3d` adapter and schema ingest it (benchmarks/paper_tables.py --preset cpu).
SLICE3D_COLUMNS = (
    "isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general",
    "clin_size_long_diam_mm", "image_type", "tbp_tile_type", "tbp_lv_A", "tbp_lv_Aext",
    "tbp_lv_B", "tbp_lv_Bext", "tbp_lv_C", "tbp_lv_Cext", "tbp_lv_H", "tbp_lv_Hext",
    "tbp_lv_L", "tbp_lv_Lext", "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio",
    "tbp_lv_color_std_mean", "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL",
    "tbp_lv_deltaLB", "tbp_lv_deltaLBnorm", "tbp_lv_eccentricity", "tbp_lv_location",
    "tbp_lv_location_simple", "tbp_lv_minorAxisMM", "tbp_lv_nevi_confidence",
    "tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_perimeterMM",
    "tbp_lv_radial_color_std_max", "tbp_lv_stdL", "tbp_lv_stdLExt", "tbp_lv_symm_2axis",
    "tbp_lv_symm_2axis_angle", "tbp_lv_x", "tbp_lv_y", "tbp_lv_z", "attribution",
    "copyright_license", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4",
    "iddx_5", "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
)  # fmt: skip
# The generator's site -> (anatom_site_general, tbp_lv_location_simple, height of the TBP x/y/z
# coordinates in mm); torso and limbs get a side (front/back, left/right) at random.
SLICE3D_SITES = {
    "head_neck": ("head/neck", "Head & Neck", 1650.0),
    "torso": ("{torso} torso", "Torso {Side}", 1300.0),
    "upper_limb": ("upper extremity", "{Hand} Arm", 1250.0),
    "lower_limb": ("lower extremity", "{Hand} Leg", 500.0),
    "acral": ("palms/soles", "{Hand} Leg", 60.0),
}
SLICE3D_INSTITUTIONS = (
    "Memorial Sloan Kettering Cancer Center",
    "Department of Dermatology, Hospital Clinic de Barcelona",
    "Frazer Institute, The University of Queensland, Dermatology Research Centre",
)


def _lab(rgb) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour in 0..255: what the TBP lesion visualiser reports."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = (
        np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    )
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > 216 / 24389, np.cbrt(t), (24389 / 27 * t + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _skin_rgb(fitzpatrick: int) -> np.ndarray:
    """The background tone `render` draws for a Fitzpatrick type (before the site tint)."""
    t = (fitzpatrick - 1) / 5.0
    return np.array((238, 212, 190), np.float64) * (1 - t) + np.array((92, 58, 38)) * t


def _slice3d_rows(
    patient: dict, lesion: dict, pid: str, isic: str, rng: np.random.Generator
) -> dict:
    """One SLICE-3D table row from a generated patient and lesion (true values)."""
    malignant = lesion["diagnosis"] in MALIGNANT
    general, simple, height = SLICE3D_SITES[lesion["site"]]
    front = bool(rng.random() < 0.5)
    left = bool(rng.random() < 0.5)
    general = general.format(torso="anterior" if front else "posterior")
    simple = simple.format(Side="Front" if front else "Back", Hand="Left" if left else "Right")
    location = simple if lesion["site"] == "head_neck" else f"{simple} {('Upper', 'Lower')[left]}"
    d = lesion["diameter_mm"]
    ecc = float(rng.uniform(0.3, 0.95))
    minor = d * float(np.sqrt(1 - ecc**2))
    area = np.pi * d * minor / 4
    border = float(rng.uniform(6, 9) if lesion["irregular_border"] else rng.uniform(1, 4))
    perimeter = np.pi * (d + minor) / 2 * (1 + 0.05 * border)
    L, A, B = _lab(COLOURS[lesion["colour"]]) + rng.normal(0, 1.5, 3)
    Lx, Ax, Bx = _lab(_skin_rgb(patient["fitzpatrick"])) + rng.normal(0, 1.5, 3)
    dL, dA, dB = L - Lx, A - Ax, B - Bx
    colour_std = float(rng.uniform(2, 5) if malignant else rng.uniform(0, 2))
    r = lambda x, k=4: round(float(x), k)  # noqa: E731
    row = {
        "isic_id": isic,
        "target": int(malignant),
        "patient_id": pid,
        "age_approx": float(5 * round(patient["age"] / 5)),
        "sex": patient["sex"],
        "anatom_site_general": general,
        "clin_size_long_diam_mm": r(d, 2),
        "image_type": "TBP tile: close-up",
        "tbp_tile_type": ("3D: white", "3D: XP")[int(rng.random() < 0.5)],
        "tbp_lv_A": r(A),
        "tbp_lv_Aext": r(Ax),
        "tbp_lv_B": r(B),
        "tbp_lv_Bext": r(Bx),
        "tbp_lv_C": r(np.hypot(A, B)),
        "tbp_lv_Cext": r(np.hypot(Ax, Bx)),
        "tbp_lv_H": r(np.degrees(np.arctan2(B, A))),
        "tbp_lv_Hext": r(np.degrees(np.arctan2(Bx, Ax))),
        "tbp_lv_L": r(L),
        "tbp_lv_Lext": r(Lx),
        "tbp_lv_areaMM2": r(area),
        "tbp_lv_area_perim_ratio": r(perimeter**2 / area),
        "tbp_lv_color_std_mean": r(colour_std),
        "tbp_lv_deltaA": r(dA),
        "tbp_lv_deltaB": r(dB),
        "tbp_lv_deltaL": r(dL),
        "tbp_lv_deltaLB": r(np.hypot(dL, dB)),
        "tbp_lv_deltaLBnorm": r(np.hypot(dL, dB) / 4 + rng.normal(0, 0.3)),
        "tbp_lv_eccentricity": r(ecc),
        "tbp_lv_location": location,
        "tbp_lv_location_simple": simple,
        "tbp_lv_minorAxisMM": r(minor),
        "tbp_lv_nevi_confidence": r(rng.uniform(0, 30) if malignant else rng.uniform(20, 100)),
        "tbp_lv_norm_border": r(border),
        "tbp_lv_norm_color": r(rng.uniform(5, 9) if malignant else rng.uniform(0, 4)),
        "tbp_lv_perimeterMM": r(perimeter),
        "tbp_lv_radial_color_std_max": r(colour_std * rng.uniform(0.8, 1.6)),
        "tbp_lv_stdL": r(rng.uniform(0.5, 3) + colour_std / 2),
        "tbp_lv_stdLExt": r(rng.uniform(0.5, 3)),
        "tbp_lv_symm_2axis": r(rng.uniform(0.5, 0.9) if malignant else rng.uniform(0.1, 0.4)),
        "tbp_lv_symm_2axis_angle": int(5 * rng.integers(0, 37)),
        "tbp_lv_x": r((-1 if left else 1) * rng.uniform(20, 250), 3),
        "tbp_lv_y": r(height + rng.normal(0, 60), 3),
        "tbp_lv_z": r((1 if front else -1) * rng.uniform(10, 150), 3),
        "attribution": SLICE3D_INSTITUTIONS[int(rng.integers(len(SLICE3D_INSTITUTIONS)))],
        "copyright_license": ("CC-BY", "CC-BY-NC")[int(rng.random() < 0.3)],
        # the release names a lesion only for some benign lesions and every malignant one
        "lesion_id": f"IL_{isic[5:]}" if malignant or rng.random() < 0.1 else None,
        "iddx_full": "Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma"
        if lesion["diagnosis"] == "melanoma"
        else (
            "Malignant::Malignant epidermal proliferations::Basal cell carcinoma"
            if malignant
            else "Benign"
        ),
        "iddx_1": "Malignant" if malignant else "Benign",
        "iddx_2": "Malignant melanocytic proliferations (Melanoma)"
        if lesion["diagnosis"] == "melanoma"
        else ("Malignant epidermal proliferations" if malignant else None),
        "iddx_3": None,
        "iddx_4": None,
        "iddx_5": None,
        "mel_mitotic_index": None,
        "mel_thick_mm": r(rng.uniform(0.2, 2.0), 2) if lesion["diagnosis"] == "melanoma" else None,
        "tbp_lv_dnn_lesion_confidence": r(
            rng.uniform(50, 100) if malignant else rng.uniform(0, 100)
        ),
    }
    return row


def generate_slice3d_cohort(
    out: str | Path,
    *,
    patients: int = 60,
    seed: int = 0,
    image_size: int = 64,
    lesions: tuple[int, int] = (3, 16),
) -> SynthResult:
    """A generated cohort in SLICE-3D's training layout: `train-metadata.csv` (every column of
    the ISIC 2024 training table, leak columns included) and `train-image.hdf5` (one dataset per
    isic_id holding JPEG bytes), read by `slimp ingest slice-3d` with the built-in schema.

    Like SLICE-3D, patients have many lesions (`lesions`: uniform range per patient, so a cap
    N below it matters), one tile each, few of them malignant (~10% of patients' lesions at
    most, where SLICE-3D has 0.1%: a probe needs positives), nearly no missing values. Images
    are drawn from the metadata as by `generate_cohort` (lesion colour -> tbp_lv_L/A/B, skin
    tone -> tbp_lv_Lext/Aext/Bext, size, border, site...). Deterministic for a seed.
    """
    import h5py

    lo, hi = lesions
    if patients < 1:
        raise SlimpError(f"--patients must be at least 1 (got {patients})")
    if not 1 <= lo <= hi:
        raise SlimpError(f"lesions per patient: need 1 <= low <= high (got {lo}, {hi})")
    if not 16 <= image_size <= 4096:
        raise SlimpError(f"--image-size must be between 16 and 4096 (got {image_size})")
    check_seed(seed, "--seed")
    out = Path(out)
    if (out / "train-metadata.csv").exists():
        raise SlimpError(
            f"{out}: already holds a cohort (train-metadata.csv); choose an empty folder"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlimpError(f"{out}: cannot create the folder ({exc.strerror})") from None
    rng = np.random.default_rng([seed, 0x51CE])
    rows, images = [], {}
    n_malignant = 0
    for i in range(patients):
        age = int(rng.integers(25, 86))
        patient = {
            "age": age,
            "sex": ("female", "male")[int(rng.random() < 0.5)],
            "fitzpatrick": int(rng.choice(6, p=(0.2, 0.35, 0.25, 0.1, 0.06, 0.04))) + 1,
        }
        pid = f"IP_{i:07d}"
        risk = 0.03 + 0.08 * (age > 60)
        patient_rows = []
        for j in range(int(rng.integers(lo, hi + 1))):
            malignant = bool(rng.random() < risk)
            dx = (
                MALIGNANT[int(rng.random() < 0.4)]
                if malignant
                else (
                    "seborrheic_keratosis" if rng.random() < (0.4 if age > 50 else 0.1) else "nevus"
                )
            )
            d_lo, d_hi = DIAMETER[dx]
            lesion = {
                "diagnosis": dx,
                "site": SITES[int(rng.choice(len(SITES), p=SITE_P))],
                "diameter_mm": round(float(rng.uniform(d_lo, d_hi)) / 2, 1),  # TBP tiles: small
                "colour": list(COLOURS)[int(rng.choice(len(COLOURS), p=COLOUR_P[dx]))],
                "elevation": ELEVATIONS[int(rng.choice(3, p=(0.6, 0.3, 0.1)))],
                "irregular_border": bool(rng.random() < (0.85 if malignant else 0.1)),
            }
            isic = f"ISIC_{len(rows) + len(patient_rows):07d}"
            patient_rows.append(_slice3d_rows(patient, lesion, pid, isic, rng))
            n_malignant += malignant
            pixels = render(
                patient,
                {**lesion, "diameter_mm": 2 * lesion["diameter_mm"]},
                image_size,
                np.random.default_rng([seed, i, j]),
            )
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=92)
            images[isic] = buf.getvalue()
        if rng.random() < 0.02:  # SLICE-3D misses ~2% of the patient fields
            for row in patient_rows:
                row["age_approx"] = None
        rows += patient_rows
    tmp_csv, tmp_h5 = out / ".train-metadata.csv.tmp", out / ".train-image.hdf5.tmp"
    with open(tmp_csv, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SLICE3D_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in SLICE3D_COLUMNS])
    with h5py.File(tmp_h5, "w", track_order=True) as h5:
        for isic, data in images.items():
            h5.create_dataset(isic, data=np.bytes_(data))
    os.replace(tmp_h5, out / "train-image.hdf5")
    os.replace(tmp_csv, out / "train-metadata.csv")  # last: the table says the cohort is whole
    return SynthResult(
        out=out, patients=patients, lesions=len(rows), images=len(rows), malignant=n_malignant
    )
