"""Ingest: images/s per worker, and peak memory at 1x and 4x the cohort size, in one run.

    .venv/bin/python benchmarks/ingest.py [--images 2000] [--rows 25000] [--scale 4]

One JSON line per figure ({"figure", "value", "unit", ...}); every ingest runs in a fresh
Python process so its peak RSS (VmHWM) is its own.

- ingest_images_per_s_per_worker (workers 1 and all cores): a generated cohort (`synth`,
  PNG sources of --source-size px, ~2.7 images per patient) ingested at --image-size; the two
  outputs must be byte-identical (`identical_output`);
- ingest_peak_rss_synth: peak RSS of the main process for that cohort at 1x and --scale x;
- ingest_peak_rss_slice3d: the same for a SLICE-3D-like release (`train-metadata.csv` with
  the ISIC 2024 columns, 55 per row, ~385 lesions per patient, images in `train-image.hdf5`:
  8 px JPEGs, so the figure is the table's cost, not the images'), --rows and --scale x rows;
  `bytes_per_row` is the growth divided by the added rows, `slice3d_full_mb` extrapolates it
  to SLICE-3D's 401,059 rows. Memory is flat in the dataset size when `ratio` stays near 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slimp_cli.ingest.synth import generate_cohort  # noqa: E402

IMAGES_PER_PATIENT = 2.7  # measured mean of the generator (geometric lesion count + second images)
SLICE3D_ROWS = 401_059
LESIONS_PER_PATIENT = 385  # SLICE-3D: 401,059 images of 1,042 patients
# The ISIC 2024 training table's columns (the 44 of the shared test sample + the label leaks).
SLICE3D_COLUMNS = (
    "isic_id,target,patient_id,age_approx,sex,anatom_site_general,clin_size_long_diam_mm,"
    "image_type,tbp_tile_type,tbp_lv_A,tbp_lv_Aext,tbp_lv_B,tbp_lv_Bext,tbp_lv_C,tbp_lv_Cext,"
    "tbp_lv_H,tbp_lv_Hext,tbp_lv_L,tbp_lv_Lext,tbp_lv_areaMM2,tbp_lv_area_perim_ratio,"
    "tbp_lv_color_std_mean,tbp_lv_deltaA,tbp_lv_deltaB,tbp_lv_deltaL,tbp_lv_deltaLB,"
    "tbp_lv_deltaLBnorm,tbp_lv_eccentricity,tbp_lv_location,tbp_lv_location_simple,"
    "tbp_lv_minorAxisMM,tbp_lv_nevi_confidence,tbp_lv_norm_border,tbp_lv_norm_color,"
    "tbp_lv_perimeterMM,tbp_lv_radial_color_std_max,tbp_lv_stdL,tbp_lv_stdLExt,"
    "tbp_lv_symm_2axis,tbp_lv_symm_2axis_angle,tbp_lv_x,tbp_lv_y,tbp_lv_z,attribution,"
    "copyright_license,lesion_id,iddx_full,iddx_1,iddx_2,iddx_3,iddx_4,iddx_5,mel_mitotic_index,"
    "mel_thick_mm,tbp_lv_dnn_lesion_confidence"
).split(",")
TEXT = {
    "image_type": ["TBP tile: close-up"],
    "tbp_tile_type": ["3D: XP", "3D: white"],
    "sex": ["male", "female", ""],
    "anatom_site_general": ["posterior torso", "lower extremity", "head/neck", "upper extremity"],
    "tbp_lv_location": ["Torso Back Top Third", "Left Leg - Lower", "Head & Neck", "Right Arm"],
    "tbp_lv_location_simple": ["Torso Back", "Left Leg", "Head & Neck", "Right Arm"],
    "attribution": ["Memorial Sloan Kettering Cancer Center", "ACEMID MIA", "Frazer Institute"],
    "copyright_license": ["CC-BY", "CC-BY-NC", "CC-0"],
    "iddx_full": ["Benign", "Benign::Benign melanocytic proliferations::Nevus"],
    "iddx_1": ["Benign"],
}


def slice3d_like(out: Path, rows: int, seed: int = 0) -> None:
    """A SLICE-3D-shaped release: train-metadata.csv + train-image.hdf5 (8 px JPEGs)."""
    import h5py
    from PIL import Image

    rng = np.random.default_rng(seed)
    patients = np.sort(rng.integers(0, max(1, round(rows / LESIONS_PER_PATIENT)), rows))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (150, 100, 80)).save(buf, format="JPEG")
    jpeg = np.void(buf.getvalue())
    out.mkdir(parents=True)
    with (
        open(out / "train-metadata.csv", "w", newline="") as handle,
        h5py.File(out / "train-image.hdf5", "w") as h5,
    ):
        writer = csv.writer(handle)
        writer.writerow(SLICE3D_COLUMNS)
        numbers = rng.normal(20, 8, size=(rows, len(SLICE3D_COLUMNS)))  # like tbp_lv_* floats
        for i in range(rows):
            isic = f"ISIC_{i:07d}"
            h5[isic] = jpeg
            row = {
                "isic_id": isic,
                "target": str(int(rng.random() < 0.001)),
                "patient_id": f"IP_{patients[i]:07d}",
                "age_approx": f"{5 * rng.integers(4, 18)}.0",
                "lesion_id": f"IL_{i:07d}" if rng.random() < 0.05 else "",
                "iddx_2": "",
                "iddx_3": "",
                "iddx_4": "",
                "iddx_5": "",
                "mel_mitotic_index": "",
                "mel_thick_mm": "",
            }
            writer.writerow(
                [
                    row[c]
                    if c in row
                    else TEXT[c][rng.integers(len(TEXT[c]))]
                    if c in TEXT
                    else repr(float(abs(numbers[i, j])))
                    for j, c in enumerate(SLICE3D_COLUMNS)
                ]
            )


_CHILD = """
import json, resource, sys, time
from slimp_cli.ingest import ingest

def peak_mb():
    # VmHWM: this program's own peak. ru_maxrss would also count the benchmark process's RSS,
    # which the child inherits at fork (Linux carries the high-water mark across exec).
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

fmt, src, out, size, workers = sys.argv[1:6]
t0 = time.perf_counter()
result = ingest(fmt, src, out, image_size=int(size), workers=int(workers))
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "images": result.manifest["counts"]["images"],
                  "shards": [s["sha256"] for s in result.manifest["shards"]],
                  "peak_rss_mb": peak_mb()}))
"""


def ingest_in_child(fmt: str, source: Path, out: Path, image_size: int, workers: int) -> dict:
    """Ingest in a fresh interpreter: its peak RSS is this ingest's alone."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, fmt, str(source), str(out), str(image_size), str(workers)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ingest of {source} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def emit(figure: str, value: float, unit: str, **extra) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 2), "unit": unit, **extra}))


def memory_figures(figure: str, runs: list[tuple[int, dict]], *, full_rows: int | None) -> None:
    (n1, small), (n4, large) = runs
    growth = (large["peak_rss_mb"] - small["peak_rss_mb"]) * 2**20 / (n4 - n1)
    extra = {}
    if full_rows is not None:
        # a flat (or, by allocator noise, falling) peak extrapolates to the larger of the two
        extra["slice3d_full_mb"] = round(
            max(small["peak_rss_mb"], large["peak_rss_mb"])
            + max(growth, 0.0) * (full_rows - n4) / 2**20,
            1,
        )
    emit(
        figure,
        large["peak_rss_mb"],
        "MB",
        baseline=round(small["peak_rss_mb"], 1),
        ratio=round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        images=[n1, n4],
        bytes_per_row=round(growth),
        **extra,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images of the synth cohort (1x)")
    parser.add_argument("--rows", type=int, default=25000, help="rows of the SLICE-3D-like table")
    parser.add_argument("--scale", type=int, default=4, help="the larger size, in multiples")
    parser.add_argument("--source-size", type=int, default=160, help="synth source image side")
    parser.add_argument("--image-size", type=int, default=128, help="--image-size of the ingest")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    common = {"python": platform.python_version(), "machine": platform.machine(), "cores": cores}
    with tempfile.TemporaryDirectory(prefix="slimp-bench-") as tmp:
        tmp = Path(tmp)
        synth = []
        for mult in (1, args.scale):
            patients = max(1, round(args.images * mult / IMAGES_PER_PATIENT))
            cohort = generate_cohort(
                tmp / f"synth-{mult}", patients=patients, seed=0, image_size=args.source_size
            )
            runs = {
                w: ingest_in_child("synth", cohort.out, tmp / f"out-{mult}-{w}", args.image_size, w)
                for w in ((1, cores) if mult == 1 else (1,))
            }
            synth.append((runs[1]["images"], runs[1]))
            if mult == 1:
                for w, run in runs.items():
                    emit(
                        "ingest_images_per_s_per_worker",
                        run["images"] / run["seconds"] / w,
                        "images/s",
                        workers=w,
                        images=run["images"],
                        total_images_per_s=round(run["images"] / run["seconds"], 1),
                        identical_output=runs[1]["shards"] == run["shards"],
                        **common,
                    )
        memory_figures("ingest_peak_rss_synth", synth, full_rows=None)
        slice3d = []
        for mult in (1, args.scale):
            source = tmp / f"slice3d-{mult}"
            t0 = time.perf_counter()
            slice3d_like(source, args.rows * mult)
            generated = time.perf_counter() - t0
            run = ingest_in_child("slice-3d", source, tmp / f"slice3d-out-{mult}", 16, 1)
            run["generate_s"] = generated
            slice3d.append((run["images"], run))
        memory_figures("ingest_peak_rss_slice3d", slice3d, full_rows=SLICE3D_ROWS)


if __name__ == "__main__":
    main()
