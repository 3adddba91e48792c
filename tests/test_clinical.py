"""Clinical metrics against known answers: hand-worked pAUC cases and the ISIC 2024 formula,
scikit-learn on literal resamples, brute-force operating points and DeLong, the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    roc_auc_score,
)

from slimp_cli.core.errors import SlimpError
from slimp_cli.eval.bootstrap import (
    CHUNK,
    PatientBootstrap,
    check_resamples,
    percentile_interval,
)
from slimp_cli.eval.calibration import bin_ids, calibration_metrics
from slimp_cli.eval.clinical import MalignantTask, curve_metrics, isic_pauc
from slimp_cli.eval.delong import delong_test
from slimp_cli.eval.metrics import ovr_auc
from slimp_cli.eval.weighted import weighted_metrics

# --- pAUC above 80% TPR ---------------------------------------------------------------------
# Hand-worked: ROC points (FPR, TPR) drawn from the scores, area = int_{0.8}^{1} 1 - FPR(t) dt.
PAUC_CASES = [
    # TPR reaches 0.8 at FPR 0, stays there to FPR 0.6, then the last positive: a vertical
    # step at FPR 0.6 -> 0.2 * (1 - 0.6)
    ([0.9, 0.8, 0.7, 0.6, 0.2], [0.5, 0.4, 0.3, 0.1, 0.05], 0.08),
    # the last positive ties a negative at 0.3: a diagonal from (0.4, 0.8) to (0.6, 1.0),
    # mean FPR 0.5 over TPR 0.8..1 -> 0.2 * 0.5
    ([0.9, 0.8, 0.7, 0.6, 0.3], [0.5, 0.4, 0.3, 0.1, 0.05], 0.10),
    # 4 positives: the tie at 0.4 is a diagonal from (0.25, 0.75) to (0.5, 1.0) that crosses
    # TPR 0.8 at FPR 0.30 -> 0.2 * (1 - (0.30 + 0.50) / 2)
    ([0.9, 0.8, 0.7, 0.4], [0.6, 0.4, 0.2, 0.1], 0.12),
    # perfect and reversed rankings: the whole strip, and nothing
    ([0.9, 0.8], [0.2, 0.1], 0.2),
    ([0.2, 0.1], [0.9, 0.8], 0.0),
]


def _case(pos, neg):
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(int)
    return y, np.r_[pos, neg]


def kaggle_isic_2024_score(y, score, min_tpr=0.80):
    """The ISIC 2024 challenge's Kaggle metric as published (pandas stripped)."""
    v_gt = abs(np.asarray(y) - 1)
    v_pred = np.array([1.0 - x for x in score])
    max_fpr = abs(1 - min_tpr)
    partial_auc_scaled = roc_auc_score(v_gt, v_pred, max_fpr=max_fpr)
    return 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (
        partial_auc_scaled - 0.5
    )


@pytest.mark.parametrize("pos,neg,expected", PAUC_CASES)
def test_pauc_hand_worked(pos, neg, expected):
    y, s = _case(pos, neg)
    assert isic_pauc(y, s) == pytest.approx(expected, abs=1e-12)
    assert kaggle_isic_2024_score(y, s) == pytest.approx(expected, abs=1e-12)
    assert curve_metrics(y == 1, s)["pauc_80"][0] == pytest.approx(expected, abs=1e-12)


def test_pauc_equals_the_isic_formula_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for _trial in range(30):
        n = int(rng.integers(8, 200))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = np.round(rng.normal(size=n) + 0.8 * y, int(rng.integers(0, 3)))  # many ties
        expected = kaggle_isic_2024_score(y, s)
        assert isic_pauc(y, s) == pytest.approx(expected, abs=1e-12)
        assert curve_metrics(y == 1, s)["pauc_80"][0] == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= expected <= 0.2


# --- operating points -----------------------------------------------------------------------
def brute_operating_points(y, s):
    """Every threshold t (called positive: s >= t, plus 'nothing positive'), by loops."""
    pos, neg = s[y == 1], s[y == 0]
    points = [(0.0, 1.0)]  # (sensitivity, specificity) above every score
    for t in np.unique(s):
        points.append((float(np.mean(pos >= t)), float(np.mean(neg < t))))
    out = {}
    for level in (90, 95):
        out[f"sens_at_spec{level}"] = max(se for se, sp in points if sp >= level / 100 - 1e-12)
        out[f"spec_at_sens{level}"] = max(sp for se, sp in points if se >= level / 100 - 1e-12)
    return out


def test_operating_points_equal_a_threshold_loop():
    rng = np.random.default_rng(1)
    for _trial in range(30):
        n = int(rng.integers(10, 300))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = np.round(rng.normal(size=n) + 1.2 * y, int(rng.integers(0, 3)))
        got = curve_metrics(y == 1, s)
        for key, value in brute_operating_points(y, s).items():
            assert got[key][0] == pytest.approx(value, abs=1e-12), key


def test_operating_points_exactly_at_the_bound_count():
    # 10 negatives: one above every positive -> specificity exactly 0.9 at sensitivity 1.0
    y = np.r_[np.ones(5), np.zeros(10)].astype(int)
    s = np.r_[[0.8] * 5, [0.9], [0.1] * 9]
    got = curve_metrics(y == 1, s)
    assert got["sens_at_spec90"][0] == 1.0
    assert got["sens_at_spec95"][0] == 0.0  # only "nothing positive" keeps specificity >= 95%
    assert got["spec_at_sens90"][0] == pytest.approx(0.9)


# --- sklearn on literal resamples -----------------------------------------------------------
def _resample(rng, n):
    return rng.multinomial(n, np.ones(n) / n)  # counts per row, zeros included


def test_weighted_metrics_equal_sklearn_on_the_repeated_rows():
    rng = np.random.default_rng(2)
    n = 120
    y = rng.integers(0, 2, n)
    p1 = np.clip(np.round(rng.uniform(size=n) * 0.6 + 0.35 * y, 2), 0, 1)
    proba = np.column_stack([1 - p1, p1])
    w = np.vstack([np.ones(n), *[_resample(rng, n) for _ in range(6)]])
    got = weighted_metrics(y, proba, task="binary", malignant=MalignantTask.binary(), weights=w)
    for r, counts in enumerate(w.astype(int)):
        yr, pr = np.repeat(y, counts), np.repeat(p1, counts)
        pred = (np.repeat(proba, counts, axis=0)).argmax(1)
        expected = {
            "accuracy": accuracy_score(yr, pred),
            "balanced_accuracy": balanced_accuracy_score(yr, pred),
            "f1": f1_score(yr, pred, zero_division=0),
            "auc": roc_auc_score(yr, pr),
            "ap": average_precision_score(yr, pr),
            "pauc_80": kaggle_isic_2024_score(yr, pr),
            "brier": brier_score_loss(yr, pr),
            "sensitivity": np.mean(pred[yr == 1] == 1),
            "specificity": np.mean(pred[yr == 0] == 0),
        }
        for key, value in expected.items():
            assert got[key][r] == pytest.approx(value, abs=1e-12), (r, key)


def test_weighted_multiclass_metrics_equal_sklearn_on_the_repeated_rows():
    rng = np.random.default_rng(3)
    n, c = 150, 4
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    task = MalignantTask(malignant=(False, True, True, False))
    w = np.vstack([np.ones(n), *[_resample(rng, n) for _ in range(5)]])
    w[1, (y == 3) | (proba.argmax(1) == 3)] = 0  # a resample where class 3 never occurs
    got = weighted_metrics(y, proba, task="multiclass", malignant=task, weights=w)
    for r, counts in enumerate(w.astype(int)):
        yr, pr = np.repeat(y, counts), np.repeat(proba, counts, axis=0)
        pred = pr.argmax(1)
        mal = np.isin(yr, [1, 2])
        expected = {
            "accuracy": accuracy_score(yr, pred),
            "balanced_accuracy": balanced_accuracy_score(yr, pred),
            "f1_macro": f1_score(yr, pred, average="macro", zero_division=0),
            "f1_weighted": f1_score(yr, pred, average="weighted", zero_division=0),
            "auc": ovr_auc(yr, pr, labels=np.arange(c)),
            "ap": average_precision_score(mal, pr[:, 1] + pr[:, 2]),
        }
        for key, value in expected.items():
            assert got[key][r] == pytest.approx(value, abs=1e-12), (r, key)


def test_curve_metrics_undefined_without_a_class():
    y = np.zeros(6, bool)
    got = curve_metrics(y, np.arange(6.0))
    assert all(math.isnan(v[0]) for v in got.values())
    got = curve_metrics(~y, np.arange(6.0))
    assert got["ap"][0] == 1.0 and math.isnan(got["auc"][0])  # AP needs positives only


def test_auc_only_is_the_full_auc():
    """`auc_only` (the subgroup tables' path) gives the AUC of the full computation, resample
    by resample, NaN where a class is absent, and sklearn's on a plain draw."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40) == 1
    s = np.round(rng.normal(size=40) + y, 1)
    w = rng.poisson(1.0, size=(25, 40)).astype(float)
    w[0] = np.where(y, 0.0, 1.0)  # a resample without a positive
    got = curve_metrics(y, s, w, auc_only=True)
    assert set(got) == {"auc"}
    np.testing.assert_array_equal(got["auc"], curve_metrics(y, s, w)["auc"])
    assert math.isnan(got["auc"][0])
    plain = curve_metrics(y, s, auc_only=True)["auc"][0]
    assert plain == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert set(curve_metrics(y[:0], s[:0], auc_only=True)) == {"auc"}


# --- calibration ----------------------------------------------------------------------------
def test_ece_and_brier_known_answers():
    y = np.array([1] * 6 + [0] * 4, bool)
    cal = calibration_metrics(y, np.full(10, 0.8))
    assert cal["ece"][0] == pytest.approx(0.2)  # one bin: |0.6 - 0.8|
    assert cal["brier"][0] == pytest.approx(0.6 * 0.2**2 + 0.4 * 0.8**2)
    cal = calibration_metrics(np.array([0, 1, 1, 1], bool), np.array([0.1, 0.1, 0.9, 0.9]))
    assert cal["ece"][0] == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)


def test_ece_bins_are_sklearns():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(4)
    p = np.r_[rng.uniform(size=300), np.arange(16) / 15]  # every bin edge included
    y = rng.uniform(size=len(p)) < p
    ids = bin_ids(p)
    assert ids.min() == 0 and ids.max() == 14
    frac, mean = calibration_curve(y, p, n_bins=15, strategy="uniform")
    used = np.unique(ids)
    assert np.allclose(frac, [y[ids == b].mean() for b in used])
    assert np.allclose(mean, [p[ids == b].mean() for b in used])
    ece = sum(np.mean(ids == b) * abs(y[ids == b].mean() - p[ids == b].mean()) for b in used)
    assert calibration_metrics(y, p)["ece"][0] == pytest.approx(ece, abs=1e-12)


# --- DeLong ---------------------------------------------------------------------------------
def brute_delong(y, a, b):
    """DeLong's statistic from its definition: psi over every (positive, negative) pair."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    v10 = np.zeros((2, m))
    v01 = np.zeros((2, n))
    for k, s in enumerate((a, b)):
        for i, pi in enumerate(pos):
            for j, nj in enumerate(neg):
                psi = 1.0 if s[pi] > s[nj] else 0.5 if s[pi] == s[nj] else 0.0
                v10[k, i] += psi / n
                v01[k, j] += psi / m
    auc = v10.mean(axis=1)
    s10 = np.cov(v10)
    s01 = np.cov(v01)
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (auc[0] - auc[1]) / math.sqrt(var)
    return auc, z, 2 * norm.sf(abs(z))


def test_delong_equals_the_brute_force_statistic():
    rng = np.random.default_rng(5)
    for _trial in range(8):
        n = int(rng.integers(20, 70))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        a = np.round(rng.normal(size=n) + y, 1)  # ties within and across classes
        b = np.round(0.6 * a + rng.normal(size=n) + 0.3 * y, 1)  # correlated with a
        auc, z, p = brute_delong(y, a, b)
        got = delong_test(y == 1, a, b)
        assert got.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
        assert got.auc_a == pytest.approx(auc[0], abs=1e-12)
        assert got.auc_b == pytest.approx(auc[1], abs=1e-12)
        assert got.z == pytest.approx(z, rel=1e-9)
        assert got.p == pytest.approx(p, rel=1e-9)


def test_delong_same_scores_and_single_class():
    y = np.array([0, 1, 0, 1, 1], bool)
    s = np.array([0.1, 0.7, 0.4, 0.3, 0.9])
    assert delong_test(y, s, s).p == 1.0
    assert math.isnan(delong_test(np.ones(5, bool), s, s[::-1]).p)


# --- the bootstrap --------------------------------------------------------------------------
def test_percentile_interval_known_answer():
    assert percentile_interval(np.arange(1001) / 1000) == pytest.approx([0.025, 0.975])
    assert percentile_interval(np.r_[np.full(10, np.nan), np.arange(1001) / 1000]) == (
        pytest.approx([0.025, 0.975])
    )
    assert percentile_interval(np.full(5, np.nan)) == [None, None]


def test_resamples_draw_whole_patients_and_repeat_exactly():
    patients = np.repeat(np.array([f"P{i}" for i in range(7)]), [1, 2, 3, 1, 5, 2, 4])
    boot = PatientBootstrap(patients=patients, n_resamples=CHUNK + 7, seed=3)
    chunks = list(boot.weights(patients))
    w = np.vstack(chunks)
    assert w.shape == (CHUNK + 7, len(patients))
    for row in w:  # one weight per patient, and P patients drawn in all
        per_patient = {p: set(row[patients == p]) for p in set(patients)}
        assert all(len(v) == 1 for v in per_patient.values())
        assert sum(next(iter(v)) for v in per_patient.values()) == 7
    again = np.vstack(
        list(PatientBootstrap(patients=patients, n_resamples=CHUNK + 7, seed=3).weights(patients))
    )
    assert np.array_equal(w, again)
    # a subset of the rows gets the same draws (paired resamples across subsets / methods)
    sub = np.flatnonzero(patients != "P4")
    assert np.array_equal(np.vstack(list(boot.weights(patients[sub]))), w[:, sub])
    other = np.vstack(
        list(PatientBootstrap(patients=patients, n_resamples=5, seed=4).weights(patients))
    )
    assert not np.array_equal(other, w[:5])


def test_blocks_hold_the_chunk_by_chunk_resamples(monkeypatch):
    """Chunks scored together (BLOCK_FLOATS) and memoised counts give exactly the resamples
    of one generator per chunk, in order; counts are not memoised past MEMO_FLOATS."""
    import slimp_cli.eval.bootstrap as B

    patients = np.array([f"P{i % 9}" for i in range(30)])
    boot = PatientBootstrap(patients=patients, n_resamples=3 * CHUNK + 4, seed=5)
    code = boot.codes(patients)
    expected = np.vstack([boot._draw(c)[:, code] for c in range(4)])
    blocks = list(boot.weights(patients))
    assert len(blocks) == 1 and np.array_equal(blocks[0], expected)
    monkeypatch.setattr(B, "BLOCK_FLOATS", CHUNK * 30 * 2)  # two chunks a block
    blocks = list(boot.weights(patients))
    assert [len(b) for b in blocks] == [2 * CHUNK, CHUNK + 4]
    assert np.array_equal(np.vstack(blocks), expected)
    assert boot.counts(0) is boot.counts(0) and not boot.counts(0).flags.writeable
    monkeypatch.setattr(B, "MEMO_FLOATS", 10)
    fresh = PatientBootstrap(patients=patients, n_resamples=3 * CHUNK + 4, seed=5)
    assert fresh.counts(0) is not fresh.counts(0)
    assert np.array_equal(fresh.counts(0), boot.counts(0))


def clustered(seed=0, patients=40, lesions=15):
    """Many lesions per patient: the malignant share and the scores have a patient part."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(patients), lesions)
    y = rng.uniform(size=len(pid)) < rng.uniform(0.05, 0.6, patients)[pid]
    score = 0.8 * y + rng.normal(size=patients)[pid] + 0.3 * rng.normal(size=len(pid))
    return y, score, pid


def test_patient_grouping_widens_the_interval():
    y, score, pid = clustered()
    widths = {}
    for name, groups in (("patient", pid), ("row", np.arange(len(pid)))):
        boot = PatientBootstrap(patients=groups, n_resamples=400, seed=0)
        auc = boot.collect(lambda w: {"auc": curve_metrics(y, score, w)["auc"]}, groups)["auc"]
        low, high = percentile_interval(auc)
        widths[name] = high - low
    # 15 correlated lesions per patient: resampling rows understates the spread
    assert widths["patient"] > 1.4 * widths["row"], widths


def test_bad_resample_counts():
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(SlimpError, match="--bootstrap"):
            check_resamples(bad)
    assert check_resamples(0) == 0


def test_malignant_task_of_multiclass_rows():
    y = np.array([0, 1, 2, 2, 1, 0])
    task = MalignantTask.from_rows(y, np.array([0, 1, 0, 0, 1, -1]), ["NEV", "MEL", "SEK"])
    assert task.malignant == (False, True, False)
    proba = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert np.allclose(task.score(proba), [0.5, 0.3])
    assert task.decision(proba).tolist() == [True, False]
    with pytest.raises(SlimpError, match="class 'SEK' has both"):
        MalignantTask.from_rows(y, np.array([0, 1, 1, 0, 1, 0]), ["NEV", "MEL", "SEK"])
