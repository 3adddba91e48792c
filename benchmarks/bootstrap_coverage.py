"""Coverage of the patient-bootstrap 95% interval of the AUC on synthetic scores with a known
AUC, and the time of 1,000 resamples of every probe metric.

    python benchmarks/bootstrap_coverage.py [--reps 200] [--resamples 1000] [--rows 40000]

Scores are binormal: negatives N(0, 1), malignant N(d, 1) with d = sqrt(2) Phi^-1(0.8), so
the population AUC (a malignant and a benign lesion of two different patients) is 0.80.
- independent: 150 patients with one lesion each, 30% malignant;
- clustered: 40 patients with 15 lesions each; the score is d*y + u_patient + e (u and e
  normal with variances 0.6 and 0.4, so the marginals stay N(0, 1) / N(d, 1)) and each
  patient's malignant share is uniform in 5-60%: lesions of one patient are correlated.
  Both the patient bootstrap (eval/bootstrap.py) and a row bootstrap (each lesion its own
  "patient") are run on the same data: the row bootstrap ignores the correlation;
- clustered_120: the same with 120 patients of 5 lesions (the percentile interval's
  coverage approaches 95% as the number of patients grows).
For each scenario: the share of `reps` replications whose interval holds 0.80 (the coverage;
its Monte-Carlo standard error is printed beside it), the mean width, the mean AUC.
speed: seconds (wall and CPU) for `resamples` resamples of every metric of eval/weighted.py (accuracy, BA,
F1, AUC, AP, pAUC, operating points, ECE, Brier...) on a test set of `rows` lesions of
`rows / 40` patients. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

from slimp_cli.eval.bootstrap import PatientBootstrap, percentile_interval  # noqa: E402
from slimp_cli.eval.clinical import MalignantTask, curve_metrics  # noqa: E402
from slimp_cli.eval.weighted import weighted_metrics  # noqa: E402

TRUE_AUC = 0.80
D = math.sqrt(2.0) * norm.ppf(TRUE_AUC)


def independent(rng):
    y = rng.uniform(size=150) < 0.3
    return y, D * y + rng.normal(size=len(y)), np.arange(len(y))


def clustered(rng, patients=40, lesions=15):
    pid = np.repeat(np.arange(patients), lesions)
    y = rng.uniform(size=len(pid)) < rng.uniform(0.05, 0.6, patients)[pid]
    u = rng.normal(scale=math.sqrt(0.6), size=patients)[pid]
    return y, D * y + u + rng.normal(scale=math.sqrt(0.4), size=len(pid)), pid


def interval(y, score, groups, resamples, seed):
    boot = PatientBootstrap(patients=groups, n_resamples=resamples, seed=seed)
    auc = boot.collect(lambda w: {"auc": curve_metrics(y, score, w)["auc"]}, groups)["auc"]
    return percentile_interval(auc)


def coverage(make, reps, resamples, seed, kinds):
    rng = np.random.default_rng(seed)
    hits = {k: 0 for k in kinds}
    widths = {k: [] for k in kinds}
    aucs = []
    for r in range(reps):
        y, score, pid = make(rng)
        aucs.append(float(curve_metrics(y, score)["auc"][0]))
        for kind in kinds:
            groups = pid if kind == "patient" else np.arange(len(y))
            low, high = interval(y, score, groups, resamples, seed=r)
            hits[kind] += low <= TRUE_AUC <= high
            widths[kind].append(high - low)
    se = math.sqrt(0.95 * 0.05 / reps)
    return {
        "coverage": {k: hits[k] / reps for k in kinds},
        "coverage_mc_se": round(se, 4),
        "mean_width": {k: float(np.mean(widths[k])) for k in kinds},
        "mean_auc": float(np.mean(aucs)),
    }


def speed(rows, resamples):
    rng = np.random.default_rng(0)
    pid = rng.integers(0, max(1, rows // 40), rows)
    y = rng.uniform(size=rows) < 0.1
    p1 = 1 / (1 + np.exp(-(D * y + rng.normal(size=rows) - 2)))
    proba = np.column_stack([1 - p1, p1])
    boot = PatientBootstrap(patients=pid, n_resamples=resamples, seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    values = boot.collect(
        lambda w: weighted_metrics(
            y.astype(int), proba, task="binary", malignant=MalignantTask.binary(), weights=w
        ),
        pid,
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "rows": rows,
        "patients": int(len(np.unique(pid))),
        "resamples": resamples,
        "metrics": len(values),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = {
        "true_auc": TRUE_AUC,
        "reps": args.reps,
        "resamples": args.resamples,
        "independent": coverage(independent, args.reps, args.resamples, args.seed, ["patient"]),
        "clustered": coverage(
            clustered, args.reps, args.resamples, args.seed + 1, ["patient", "row"]
        ),
        "clustered_120": coverage(
            lambda rng: clustered(rng, patients=120, lesions=5),
            args.reps,
            args.resamples,
            args.seed + 2,
            ["patient", "row"],
        ),
        "speed": speed(args.rows, args.resamples),
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
