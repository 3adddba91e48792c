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
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SlimpError, check_seed

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
