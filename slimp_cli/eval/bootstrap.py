"""Patient-grouped bootstrap: resample the test patients with replacement, score every metric
on each resample, report the 2.5th and 97.5th percentiles (a 95% percentile interval).

Lesions of one patient share skin type, age, habits and often the diagnosis, so they are not
independent draws: resampling rows would treat 40 lesions of one patient as 40 pieces of
evidence and give too narrow an interval. A resample here draws P patients out of the P test
patients; a patient drawn k times counts each of its rows k times, so a resample is a weight
per row and a batch of resamples a weight matrix [b, n] (eval/weighted.py scores it).

Resamples are made in fixed chunks of CHUNK, chunk i from numpy's generator seeded with
(seed, i): resample r is the same whichever rows, method or seed of the probe asks for it, so
two classifiers scored on the same resamples give a paired interval of their difference, and
the probe's seeds (the same held-out rows under --split holdout) share resamples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

from ..core.errors import SlimpError

DEFAULT_RESAMPLES = 1000
CHUNK = 25  # resamples drawn from one generator (fixes which resample is which)
# Floats per weight matrix handed to a metric: consecutive chunks are scored together up to
# this size (16 MiB), since a call per 25 resamples costs more than the maths on a few hundred
# test rows; the resamples, hence every figure, are the same as chunk by chunk.
BLOCK_FLOATS = 2**21
# Drawn counts are kept while all resamples' counts fit this many floats (the subgroup tables
# ask the same resamples once per group, metric and seed).
MEMO_FLOATS = 2**22
CONFIDENCE = 0.95


def check_resamples(n: int) -> int:
    """--bootstrap N: an integer >= 0 (0 = no intervals)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise SlimpError(
            f"--bootstrap {n!r}: give the number of resamples, an integer >= 0 (0 turns it off)"
        )
    return int(n)


class PatientBootstrap:
    """Resamples of a fixed set of patients (the union of the evaluated test rows' patients).

    Usage::

        boot = PatientBootstrap(patients=patient_id[test], n_resamples=1000, seed=0)
        for w in boot.weights(patient_id[test]):      # [c, n] row weights, in blocks
            ...
        values = boot.collect(lambda w: {"auc": ...}, patient_id[test])  # {metric: [1000]}

    Passing each row's own id as its patient gives the row (lesion-level) bootstrap.
    """

    def __init__(self, *, patients: np.ndarray, n_resamples: int, seed: int = 0) -> None:
        self.n_resamples = check_resamples(n_resamples)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SlimpError(f"bootstrap seed {seed!r}: must be an integer >= 0")
        self.seed = int(seed)
        self.ids = np.unique(np.asarray(patients).astype(str))
        if len(self.ids) == 0:
            raise SlimpError("bootstrap: no patient to resample")
        self._memo: dict[int, np.ndarray] = {}

    @property
    def n_patients(self) -> int:
        return len(self.ids)

    def codes(self, row_patients: np.ndarray) -> np.ndarray:
        """Index of each row's patient among `ids`. Shape: [n] -> [n] int."""
        row_patients = np.asarray(row_patients).astype(str)
        code = np.searchsorted(self.ids, row_patients)
        code = np.minimum(code, len(self.ids) - 1)
        if len(row_patients) and not np.all(self.ids[code] == row_patients):
            raise ValueError("bootstrap: a row's patient is not among the resampled patients")
        return code

    def counts(self, chunk: int) -> np.ndarray:
        """How often each patient is drawn in the resamples of chunk `chunk`.
        Shape: [c, P] float64 (each row sums to P); read-only when memoised."""
        if chunk in self._memo:
            return self._memo[chunk]
        out = self._draw(chunk)
        if self.n_resamples * self.n_patients <= MEMO_FLOATS:
            out.flags.writeable = False
            self._memo[chunk] = out
        return out

    def _draw(self, chunk: int) -> np.ndarray:
        start = chunk * CHUNK
        c = min(CHUNK, self.n_resamples - start)
        p = self.n_patients
        rng = np.random.default_rng([self.seed, chunk])
        draws = rng.integers(0, p, size=(c, p))
        flat = np.bincount((draws + p * np.arange(c)[:, None]).ravel(), minlength=c * p)
        return flat.reshape(c, p).astype(np.float64)

    def weights(self, row_patients: np.ndarray) -> Iterator[np.ndarray]:
        """Row weights of every resample in order, whole chunks at a time, up to BLOCK_FLOATS
        a block. Shape: yields [c, n]."""
        code = self.codes(row_patients)
        chunks = math.ceil(self.n_resamples / CHUNK)
        per = max(1, BLOCK_FLOATS // (CHUNK * max(len(code), self.n_patients, 1)))
        for first in range(0, chunks, per):
            block = [self.counts(c)[:, code] for c in range(first, min(first + per, chunks))]
            yield block[0] if len(block) == 1 else np.concatenate(block)

    def collect(self, metrics, row_patients: np.ndarray) -> dict[str, np.ndarray]:
        """Run `metrics(weights [c, n]) -> {name: [c]}` over every resample.
        Returns {name: [n_resamples]}."""
        parts: dict[str, list[np.ndarray]] = {}
        for w in self.weights(row_patients):
            for key, value in metrics(w).items():
                parts.setdefault(key, []).append(np.asarray(value, dtype=np.float64))
        return {k: np.concatenate(v) for k, v in parts.items()}


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list:
    """[low, high]: the percentile interval of the resamples where the value is defined
    ([None, None] when it is defined in none). Shape: values [b]."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return [None, None]
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def intervals(resamples: Mapping[str, np.ndarray]) -> dict[str, list]:
    """{metric: [low, high]} of {metric: [b] resample values}."""
    return {k: percentile_interval(v) for k, v in resamples.items()}


def undefined_share(resamples: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Share of resamples in which each metric is undefined (NaN), for the metrics that are
    somewhere defined and somewhere not."""
    out = {}
    for key, values in resamples.items():
        share = float(np.mean(np.isnan(values))) if len(values) else 0.0
        if 0.0 < share < 1.0:
            out[key] = share
    return out
