"""`probe --task derm7pt-multilabel`: criteria decoded from raw/lesion, probed per criterion."""

import numpy as np
import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.schema import encode_raw, raw_columns
from slimp_cli.eval.multilabel import CRITERIA, criterion_targets, run_multilabel
from slimp_cli.features.store import FeatureStore, FeatureStoreWriter

VALUES = ["absent", "typical", "atypical"]


# Derm7pt diagnoses of four of DIAG's five groups (BCC, NEV, MEL, SK)
DIAGNOSES = ["basal cell carcinoma", "clark nevus", "melanoma (in situ)", "seborrheic keratosis"]
SPLIT_PATTERN = np.array(["train", "train", "valid", "test", "test"])


def make_store(path, n=240, seed=0, *, diagnoses=None, official=False):
    """Image features separate `pigment_network` linearly; the other criteria are noise.

    `diagnoses`: each row gets one of them at random (default: every row class "a"), so DIAG
    is a label too; `official`: the rows' official split cycles through SPLIT_PATTERN."""
    rng = np.random.default_rng(seed)
    features = [{"name": c, "type": "categorical", "vocab": sorted(VALUES)} for c in CRITERIA]
    records = [{c: VALUES[rng.integers(3)] for c in CRITERIA} for _ in range(n)]
    for r in records[:10]:
        r["streaks"] = None  # missing: left out of that criterion's probe
    centres = rng.normal(size=(3, 16)) * 4
    image = np.stack([centres[VALUES.index(r["pigment_network"])] for r in records]) + rng.normal(
        size=(n, 16)
    )
    cols, sources = raw_columns(features)
    label = rng.integers(0, len(diagnoses), n) if diagnoses else np.zeros(n, int)
    split = SPLIT_PATTERN[np.arange(n) % len(SPLIT_PATTERN)]
    with FeatureStoreWriter(
        path,
        n=n,
        dims={"image": 16},
        config={},
        schema=None,
        classes=diagnoses or ["a", "b"],
        raw_columns={"lesion": (cols, sources)},
        official_split=official,
    ) as w:
        w.append(
            lesion_id=[str(i) for i in range(n)],
            patient_id=[str(i) for i in range(n)],
            label=label,
            malignant=np.zeros(n, np.int8),
            features={"image": image.astype(np.float32)},
            raw={"lesion": encode_raw(features, records)},
            official_split=split if official else None,
        )
    return path, records


def test_criterion_targets_decode_one_hot_groups(tmp_path):
    features = [{"name": "streaks", "type": "categorical", "vocab": ["absent", "irregular"]}]
    cols, _ = raw_columns(features)
    x = encode_raw(features, [{"streaks": "irregular"}, {"streaks": None}, {"streaks": "absent"}])
    y, classes = criterion_targets(x, cols, "streaks")
    assert classes == ["absent", "irregular"] and y.tolist() == [1, -1, 0]
    with pytest.raises(SlimpError, match="no 'pigmentation' columns"):
        criterion_targets(x, cols, "pigmentation")


def test_probe_finds_the_criterion_the_images_encode(tmp_path):
    store, _ = make_store(tmp_path / "s.h5")
    report = run_multilabel(store, seeds=[0, 1], methods=["linear", "knn"])
    by = {(r["target"], r["method"]): r["metrics"] for r in report["results"]}
    assert set(t for t, _ in by) == set(CRITERIA) | {"mean"}
    for method in ("linear", "knn"):
        assert by[("pigment_network", method)]["balanced_accuracy"]["mean"] >= 0.9
        assert by[("streaks", method)]["balanced_accuracy"]["mean"] <= 0.6  # noise: near chance 1/3


def test_mean_is_over_every_label_including_the_diagnosis(tmp_path):
    """The "mean" row averages each metric over the 8 labels (DIAG and the 7 criteria), leaving
    out a label where the metric is undefined. Several diagnoses make DIAG a label of its own,
    and the labels' values differ (PN is learnt, the rest is noise), so a mean over the wrong
    labels, or one counting an undefined value, differs from this hand computation."""
    store, _ = make_store(tmp_path / "s.h5", diagnoses=DIAGNOSES)
    report = run_multilabel(store, seeds=[0, 1], methods=["linear", "knn"])
    for method in ("linear", "knn"):
        rows = {r["target"]: r["metrics"] for r in report["results"] if r["method"] == method}
        mean = rows.pop("mean")
        assert set(rows) == {*CRITERIA, "diagnosis"}
        assert rows["diagnosis"]["accuracy"]["mean"] is not None
        undefined = 0
        for key, value in mean.items():
            defined = [m[key]["mean"] for m in rows.values() if m[key]["mean"] is not None]
            undefined += len(rows) - len(defined)
            assert value["mean"] == pytest.approx(sum(defined) / len(defined)), key
            assert value["std"] is None
        assert undefined > 0  # BWV has no "present" row: its class metrics are undefined
        accuracy = {t: m["accuracy"]["mean"] for t, m in rows.items()}
        criteria_only = sum(accuracy[c] for c in CRITERIA) / len(CRITERIA)
        assert mean["accuracy"]["mean"] != pytest.approx(criteria_only, abs=1e-3)
        assert max(accuracy.values()) - min(accuracy.values()) > 0.3


def test_official_split_probes_the_test_cases(tmp_path):
    """--split official: each criterion's probe is fit on train + valid rows, scored on test
    rows: each accuracy equals a hand-fitted logistic regression's (the criteria but PN are
    noise, so another choice of rows changes them; 10 rows miss `streaks`: left out)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    store, records = make_store(tmp_path / "s.h5", official=True)
    report = run_multilabel(store, split="official", seeds=[0], methods=["linear"])
    assert report["split"]["kind"] == "official"
    with FeatureStore.open(store) as st:
        x, split = st.block("image"), st.official_split
    assert (split == "test").sum() == 96
    for criterion in CRITERIA:
        got = next(r for r in report["results"] if r["target"] == criterion)
        known = np.array([r[criterion] is not None for r in records])
        y = np.array([VALUES.index(r[criterion]) for r in records if r[criterion] is not None])
        train, test = np.isin(split[known], ("train", "valid")), split[known] == "test"
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        predicted = model.fit(x[known][train], y[train]).predict(x[known][test])
        assert got["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(predicted == y[test]))


def test_lesion_features_are_refused_as_a_leak(tmp_path):
    store, _ = make_store(tmp_path / "s.h5", n=60)
    with pytest.raises(SlimpError, match="leak"):
        run_multilabel(store, features=["lesion"])


def ref_class_metrics(y, proba, c):
    """Counts by hand, one row at a time; AUC as the share of (pos, neg) pairs ranked right."""
    tp = fp = fn = tn = 0
    for yi, pi in zip(y, proba):
        pred = max(range(len(pi)), key=lambda j: (pi[j], -j)) == c
        tp += pred and yi == c
        fp += pred and yi != c
        fn += (not pred) and yi == c
        tn += (not pred) and yi != c
    pos = [p[c] for yi, p in zip(y, proba) if yi == c]
    neg = [p[c] for yi, p in zip(y, proba) if yi != c]
    auc = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg])
    return {
        "class_auc": auc,
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
    }


def test_class_metrics_match_a_hand_count_and_known_answers():
    from slimp_cli.eval.metrics import class_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    proba = rng.dirichlet(np.ones(3), 40)
    for c in range(3):
        got, ref = class_metrics(y, proba, c), ref_class_metrics(y, proba, c)
        assert got == pytest.approx(ref), c
    perfect = np.eye(3)[y]
    assert class_metrics(y, perfect, 1) == {
        "class_auc": 1.0,
        "sensitivity": 1.0,
        "specificity": 1.0,
        "precision": 1.0,
    }
    never = np.tile([1.0, 0.0, 0.0], (40, 1))  # always predicts class 0
    m = class_metrics(y, never, 2)
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0 and m["precision"] == 0.0
    assert m["class_auc"] == 0.5  # a constant score ranks nothing


def test_grouped_classes_follow_derm7pt():
    from slimp_cli.eval.multilabel import GROUPS, diagnosis_group, group_targets

    classes = ["absent", "dotted", "hairpin", "linear irregular", "wreath"]
    y, names = group_targets(np.array([0, 1, 2, 3, 4, -1]), classes, GROUPS["vascular_structures"])
    assert names == ["ABS", "REG", "IR"] and y.tolist() == [0, 2, 1, 2, 1, -1]
    diagnoses = [
        "basal cell carcinoma",
        "clark nevus",
        "melanoma (in situ)",
        "lentigo",
        "seborrheic keratosis",
        "reed or spitz nevus",
        "vascular lesion",
    ]
    y, names = group_targets(np.arange(7), diagnoses, diagnosis_group)
    assert names == ["BCC", "NEV", "MEL", "MISC", "SK"]
    assert [names[i] for i in y] == ["BCC", "NEV", "MEL", "MISC", "SK", "NEV", "MISC"]


def test_report_has_the_table_i_layout(tmp_path):
    store, _ = make_store(tmp_path / "s.h5")
    report = run_multilabel(store, seeds=[0], methods=["linear"])
    table = report["table"]["linear"]
    assert table["columns"] == ["BWV", "DaG", "PIG", "PN", "RS", "STR", "VS", "DIAG", "AVG"]
    assert table["classes"] == ["PRS", "IR", "IR", "ATP", "PRS", "IR", "IR", "MEL", ""]
    by = {r["target"]: r for r in report["results"] if r["method"] == "linear"}
    pn = by["pigment_network"]
    assert pn["reported_class"] == "ATP" and pn["classes"] == ["ABS", "TYP", "ATP"]
    assert table["AUC"][3] == pn["metrics"]["class_auc"]["mean"] > 0.9  # PN: what images encode
    assert table["AUC"][0] is None  # this store's veil has no "present" value
    values = [v for v in table["Sens."][:-1] if v is not None]
    assert table["Sens."][-1] == pytest.approx(np.mean(values))
