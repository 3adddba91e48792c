"""A generated Derm7pt-like cohort: one dermoscopic and one clinical image per case (`synth --paired`).

Written in the `csv` layout (`metadata.csv`, `images/derm/`, `images/clinic/`, `schema.json`)
with Derm7pt's columns and values, so `slimp ingest synth OUT SHARDS` reads it and SM3
(`pretrain --method sm3`) can pair the two images of a case. Each case is its own patient.

What the two images of a case share (what SM3's cross-modal loss can find): the skin tone, the
lesion's colour (a continuous random hue, darker for melanoma), its size, elongation and
orientation. What differs:
- dermoscopic: a close-up (the lesion fills most of the field) inside the dark circular rim of
  a dermoscope, showing the seven-point structures of the case's metadata: pigment network
  (typical: a regular grid; atypical: a coarse broken one), dots and globules, radial streaks,
  blue-whitish veil, regression (white / blue areas), vascular dots or lines, irregular
  pigmentation (a dark off-centre blotch);
- clinical: a macroscopic photograph: a smaller lesion in a wider field of skin with a lighting
  gradient and body-site stripes, blurred so that the structures do not show.
A fraction of the cases (`missing_clinical`) has no clinical file (the table still names one),
as in real collections.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..core.errors import SlimpError

# Derm7pt's raw values (meta.csv), per criterion.
CRITERIA_VALUES = {
    "pigment_network": ("absent", "typical", "atypical"),
    "streaks": ("absent", "regular", "irregular"),
    "pigmentation": (
        "absent",
        "diffuse regular",
        "localized regular",
        "diffuse irregular",
        "localized irregular",
    ),
    "regression_structures": ("absent", "blue areas", "white areas", "combinations"),
    "dots_and_globules": ("absent", "regular", "irregular"),
    "blue_whitish_veil": ("absent", "present"),
    "vascular_structures": (
        "absent",
        "arborizing",
        "comma",
        "hairpin",
        "within regression",
        "wreath",
        "dotted",
        "linear irregular",
    ),
}
# Diagnoses (Derm7pt's strings) and their probabilities; grouped as DIAG: NEV, MEL, SK, BCC, MISC.
DIAGNOSES = (
    ("clark nevus", 0.3),
    ("reed or spitz nevus", 0.08),
    ("dermal nevus", 0.06),
    ("blue nevus", 0.04),
    ("melanoma (less than 0.76 mm)", 0.12),
    ("melanoma (in situ)", 0.07),
    ("melanoma (0.76 to 1.5 mm)", 0.07),
    ("seborrheic keratosis", 0.08),
    ("basal cell carcinoma", 0.07),
    ("dermatofibroma", 0.04),
    ("vascular lesion", 0.04),
    ("lentigo", 0.03),
)
LOCATIONS = ("back", "lower limbs", "upper limbs", "chest", "abdomen", "head neck", "acral")
SITE_ANGLE = {loc: 0.45 * i for i, loc in enumerate(LOCATIONS)}
ELEVATIONS = ("flat", "palpable", "nodular")
COLUMNS = (
    "case_num",
    "diagnosis",
    "seven_point_score",
    *CRITERIA_VALUES,
    "elevation",
    "location",
    "sex",
    "clinic",
    "derm",
)


@dataclass(frozen=True, kw_only=True)
class PairedResult:
    """What `generate_paired_cohort` wrote."""

    out: Path
    cases: int
    images: int
    missing_clinical: int
    malignant: int


def paired_schema() -> dict:
    """The dataset schema of a paired cohort (written as OUT/schema.json): Derm7pt's roles."""
    cat = "categorical"
    return {
        "name": "synth-paired",
        "description": "generated paired cohort (slimp synth --paired): a dermoscopic and a "
        "clinical image per case, seven-point criteria in the metadata",
        "patient_id": None,
        "lesion_id": "case_num",
        "image": "derm",
        "extra_images": ["clinic"],
        "modalities": {"derm": "dermoscopic", "clinic": "clinical"},
        "label": "diagnosis",
        "malignant": [],
        "malignant_contains": ["melanoma"],
        "patient_features": [],
        "lesion_features": [
            {"name": "seven_point_score", "type": "numerical"},
            *({"name": c, "type": cat} for c in CRITERIA_VALUES),
            {"name": "elevation", "type": cat},
            {"name": "location", "type": cat},
            {"name": "sex", "type": cat},
        ],
        "excluded": [],
    }


def _pick(rng: np.random.Generator, values, p) -> str:
    p = np.asarray(p, dtype=float)
    return values[int(rng.choice(len(values), p=p / p.sum()))]


def _criteria(rng: np.random.Generator, diagnosis: str) -> dict:
    """Seven-point criteria drawn given the diagnosis (melanoma: atypical patterns likelier)."""
    mel = "melanoma" in diagnosis
    v = CRITERIA_VALUES
    return {
        "pigment_network": _pick(rng, v["pigment_network"], (3, 3, 4) if mel else (4, 5, 1)),
        "streaks": _pick(rng, v["streaks"], (4, 1, 4) if mel else (7, 2, 1)),
        "pigmentation": _pick(
            rng, v["pigmentation"], (3, 1, 0.5, 3, 1) if mel else (6, 2, 1, 1, 0.3)
        ),
        "regression_structures": _pick(
            rng, v["regression_structures"], (4, 2, 1, 2) if mel else (9, 1, 0.5, 0.3)
        ),
        "dots_and_globules": _pick(rng, v["dots_and_globules"], (2, 2, 6) if mel else (3, 4, 3)),
        "blue_whitish_veil": _pick(rng, v["blue_whitish_veil"], (5, 5) if mel else (9, 1)),
        "vascular_structures": _pick(
            rng,
            v["vascular_structures"],
            (7, 0.2, 0.2, 0.2, 1, 0.1, 1, 1)
            if mel
            else (
                (3, 5, 0.5, 0.5, 0, 0.3, 0.5, 0.2)
                if diagnosis == "basal cell carcinoma"
                else (9, 0.3, 0.5, 0.2, 0.1, 0.1, 0.4, 0.1)
            ),
        ),
    }


def seven_point_score(c: dict) -> int:
    """Argenziano's weighted checklist: major criteria 2 points, minor ones 1."""
    major = (
        2 * (c["pigment_network"] == "atypical")
        + 2 * (c["blue_whitish_veil"] == "present")
        + 2 * (c["vascular_structures"] in ("dotted", "linear irregular"))
    )
    minor = (
        (c["streaks"] == "irregular")
        + ("irregular" in c["pigmentation"])
        + (c["dots_and_globules"] == "irregular")
        + (c["regression_structures"] != "absent")
    )
    return int(major + minor)


def _cases(rng: np.random.Generator, n: int) -> list[dict]:
    names = [d for d, _ in DIAGNOSES]
    probs = [p for _, p in DIAGNOSES]
    cases = []
    for i in range(n):
        diagnosis = _pick(rng, names, probs)
        criteria = _criteria(rng, diagnosis)
        mel = "melanoma" in diagnosis
        hue = rng.uniform(0.0, 1.0)
        colour = np.array(
            (
                110 + 90 * np.cos(2 * np.pi * hue),
                80 + 60 * np.cos(2 * np.pi * (hue + 0.33)),
                70 + 60 * np.cos(2 * np.pi * (hue + 0.66)),
            )
        )
        # half a brown pigment, half a random hue: lesion-like, yet different for every case
        colour = (0.5 * np.array((140, 90, 60)) + 0.5 * colour) * (0.6 if mel else 1.0)
        cases.append(
            {
                "case_num": str(i),
                "diagnosis": diagnosis,
                **criteria,
                "seven_point_score": seven_point_score(criteria),
                "elevation": _pick(rng, ELEVATIONS, (5, 3, 2)),
                "location": _pick(rng, LOCATIONS, (3, 2, 1.5, 1.5, 1, 1, 0.3)),
                "sex": ("female", "male")[int(rng.random() < 0.5)],
                # identity of the lesion, shared by its two images
                "tone": float(rng.uniform(0.0, 1.0)),
                "colour": tuple(float(c) for c in np.clip(colour, 10, 245)),
                "radius": float(rng.uniform(0.16, 0.3)),
                "elongation": float(rng.uniform(1.0, 1.7)),
                "angle": float(rng.uniform(0, np.pi)),
            }
        )
    return cases


def _skin(tone: float) -> np.ndarray:
    return (
        np.array((240, 208, 184), np.float32) * (1 - tone)
        + np.array((110, 70, 45), np.float32) * tone
    )


def _lesion_mask(
    yy, xx, case: dict, radius: float, rng: np.random.Generator, wobble: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft elliptical lesion mask (alpha [S, S, 1]) and its local coordinates."""
    size = yy.shape[0]
    cy, cx = 0.5 + rng.uniform(-0.04, 0.04, 2)
    a, e = case["angle"], case["elongation"]
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(a) + dy * np.sin(a)
    v = -dx * np.sin(a) + dy * np.cos(a)
    dist = np.sqrt((u / e) ** 2 + v**2)
    theta = np.arctan2(v, u)
    phase = rng.uniform(0, 2 * np.pi, 2)
    edge = radius * (
        1 + wobble * (np.sin(3 * theta + phase[0]) + 0.5 * np.sin(5 * theta + phase[1]))
    )
    alpha = np.clip((edge - dist) * size * 0.8 + 0.5, 0, 1)[..., None]
    return alpha, dist / np.maximum(edge, 1e-6), theta


def render_dermoscopic(case: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """A close-up inside a dermoscope's dark rim, showing the case's seven-point structures."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.broadcast_to(_skin(case["tone"]) * 1.05, (size, size, 3)).copy()
    wobble = (
        0.12 if "irregular" in case["pigmentation"] or "melanoma" in case["diagnosis"] else 0.03
    )
    alpha, rel, theta = _lesion_mask(yy, xx, case, case["radius"] * 1.25, rng, wobble)
    colour = np.array(case["colour"], np.float32)
    lesion = np.broadcast_to(colour, (size, size, 3)).copy()
    period = 0.09
    net = case["pigment_network"]
    if net != "absent":  # a grid of darker lines; atypical: coarse and broken
        jitter = 0.0 if net == "typical" else 0.35
        gx = np.sin((xx + jitter * np.sin(7 * yy)) * 2 * np.pi / period)
        gy = np.sin((yy + jitter * np.sin(5 * xx)) * 2 * np.pi / period)
        width = 0.2 if net == "typical" else 0.4
        lines = (np.abs(gx) < width) | (np.abs(gy) < width)
        lesion[lines] *= 0.7 if net == "typical" else 0.5
    dots = case["dots_and_globules"]
    if dots != "absent":
        n = 10 if dots == "regular" else 14
        for k in range(n):
            if dots == "regular":
                r, t = 0.5, 2 * np.pi * k / n
            else:
                r, t = rng.uniform(0.1, 0.95), rng.uniform(0, 2 * np.pi)
            py = 0.5 + r * 0.25 * np.sin(t)
            px = 0.5 + r * 0.25 * np.cos(t)
            dr = 0.025 if dots == "regular" else rng.uniform(0.015, 0.045)
            spot = (yy - py) ** 2 + (xx - px) ** 2 < dr**2
            lesion[spot] = lesion[spot] * 0.25
    if case["pigmentation"] != "absent":
        localized = "localized" in case["pigmentation"]
        oy, ox = rng.uniform(-0.12, 0.12, 2)
        blotch = ((yy - 0.5 - oy) ** 2 + (xx - 0.5 - ox) ** 2) < (0.08 if localized else 0.16) ** 2
        lesion[blotch] *= 0.45 if "irregular" in case["pigmentation"] else 0.7
    if case["blue_whitish_veil"] == "present":
        oy, ox = rng.uniform(-0.1, 0.1, 2)
        veil = ((yy - 0.5 - oy) ** 2 + (xx - 0.5 - ox) ** 2) < 0.14**2
        lesion[veil] = lesion[veil] * 0.3 + np.array((150, 170, 215), np.float32) * 0.7
    reg = case["regression_structures"]
    if reg in ("white areas", "combinations"):
        wy, wx = rng.uniform(-0.15, 0.15, 2)
        white = ((yy - 0.5 - wy) ** 2 + (xx - 0.5 - wx) ** 2) < 0.09**2
        lesion[white] = lesion[white] * 0.2 + 235 * 0.8
    if reg in ("blue areas", "combinations"):
        pepper = (rng.random((size, size)) < 0.08) & (rel < 0.8)
        lesion[pepper] = np.array((80, 90, 140), np.float32)
    vasc = case["vascular_structures"]
    if vasc != "absent":
        red = np.array((200, 40, 50), np.float32)
        if vasc in ("dotted", "within regression"):
            vessels = (rng.random((size, size)) < 0.05) & (rel < 0.9)
        else:  # linear / arborizing / comma / hairpin / wreath: thin lines
            k = rng.uniform(2, 5)
            vessels = (np.abs(np.sin(k * 2 * np.pi * (xx + 0.5 * yy**2))) < 0.06) & (rel < 0.9)
        lesion[vessels] = lesion[vessels] * 0.3 + red * 0.7
    img = img * (1 - alpha) + lesion * alpha
    streaks = case["streaks"]
    if streaks != "absent":  # radial lines just outside the border
        n = 12
        keep = np.ones(n, bool) if streaks == "regular" else rng.random(n) < 0.4
        for k in np.flatnonzero(keep):
            t = 2 * np.pi * k / n
            near = (np.abs(np.angle(np.exp(1j * (theta - t)))) < 0.08) & (rel > 0.9) & (rel < 1.3)
            img[near] = img[near] * 0.4
    # the dermoscope's dark circular rim
    rim = np.sqrt((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
    img = img * np.clip((0.52 - rim) / 0.06, 0.05, 1.0)[..., None]
    img = img + 3.0 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_clinical(case: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """A macroscopic photograph: smaller lesion, wider skin field, lighting, blur (no structures)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = SITE_ANGLE[case["location"]]
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi * 3.0)
    light = 0.85 + 0.3 * (xx * np.cos(rng.uniform(0, 6.3)) + yy * np.sin(rng.uniform(0, 6.3)))
    img = _skin(case["tone"])[None, None, :] * light[..., None] + 8.0 * stripes[..., None]
    alpha, _, _ = _lesion_mask(yy, xx, case, case["radius"] * 0.9, rng, 0.05)
    colour = np.array(case["colour"], np.float32) * 1.1
    img = img * (1 - alpha) + colour * alpha
    if case["elevation"] != "flat":  # specular highlight on raised lesions
        hl = ((yy - 0.47) ** 2 + (xx - 0.47) ** 2) < (
            0.04 if case["elevation"] == "palpable" else 0.07
        ) ** 2
        img[hl] = img[hl] * 0.5 + 255 * 0.5
    img = np.clip(img + 4.0 * rng.standard_normal(img.shape, dtype=np.float32), 0, 255)
    pil = Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius=size / 48))
    return np.asarray(pil)


def generate_paired_cohort(
    out: str | Path,
    *,
    cases: int = 200,
    seed: int = 0,
    image_size: int = 64,
    missing_clinical: float = 0.05,
) -> PairedResult:
    """Write `cases` generated cases to `out` (metadata.csv, images/{derm,clinic}/, schema.json).

    Deterministic for a seed: the same arguments give byte-identical files.
    """
    if cases < 1:
        raise SlimpError(f"--patients must be at least 1 (got {cases})")
    if image_size < 16:
        raise SlimpError(f"--image-size must be at least 16 (got {image_size})")
    if not 0.0 <= missing_clinical < 1.0:
        raise SlimpError(f"missing_clinical must be in [0, 1) (got {missing_clinical})")
    out = Path(out)
    if (out / "metadata.csv").exists():
        raise SlimpError(f"{out}: already holds a cohort (metadata.csv); choose an empty folder")
    for sub in ("derm", "clinic"):
        (out / "images" / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    cohort = _cases(rng, cases)
    drop = np.random.default_rng([seed, 8]).random(cases) < missing_clinical
    n_images, n_missing = 0, 0
    rows = []
    for i, case in enumerate(cohort):
        derm, clinic = f"derm/D{i:05d}.png", f"clinic/C{i:05d}.png"
        pixels = render_dermoscopic(case, image_size, np.random.default_rng([seed, i, 0]))
        Image.fromarray(pixels).save(out / "images" / derm, format="PNG", compress_level=1)
        n_images += 1
        if drop[i]:
            n_missing += 1
        else:
            pixels = render_clinical(case, image_size, np.random.default_rng([seed, i, 1]))
            Image.fromarray(pixels).save(out / "images" / clinic, format="PNG", compress_level=1)
            n_images += 1
        rows.append({**case, "derm": derm, "clinic": clinic})
    with open(out / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([str(row[c]) for c in COLUMNS])
    (out / "schema.json").write_text(json.dumps(paired_schema(), indent=2) + "\n")
    malignant = sum("melanoma" in c["diagnosis"] for c in cohort)
    return PairedResult(
        out=out, cases=cases, images=n_images, missing_clinical=n_missing, malignant=malignant
    )
