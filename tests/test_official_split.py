"""The papers' fixed splits and the melanoma task, from the store to probe / retrieve / pair
matching: `--split official` (the store's `official_split`, Derm7pt's index files) and
`--split-file CSV` (any dataset), checked against hand-fitted references and known answers."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from derm7pt_release import make_release
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.shards import ShardIndex
from slimp_cli.eval import WarningLog
from slimp_cli.eval.pair_matching import run_pair_matching
from slimp_cli.eval.probe import load_probe_data, run_probe
from slimp_cli.eval.retrieval import run_retrieval
from slimp_cli.features.store import FeatureStore, FeatureStoreWriter

CLASSES = [
    "basal cell carcinoma",
    "clark nevus",
    "melanoma",
    "melanoma (in situ)",
    "seborrheic keratosis",
]
MALIGNANT = ("basal cell carcinoma", "melanoma", "melanoma (in situ)")
SCHEMA = {"name": "derm7pt", "melanoma": ["melanoma", "melanoma (in situ)"]}
# the split of patient p (two rows each): 2/5 train, 1/5 valid, 2/5 test
PATTERN = np.array(["train", "train", "valid", "test", "test"])


def official_store(path, *, n=200, seed=0, official=True, schema=SCHEMA):
    """Rows L0.. of patients P0, P0, P1, P1, ...; a weak, noisy malignancy signal (so the
    training rows decide the fit); 5 rows with no label; the split of each row's patient."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, len(CLASSES), n)
    label[[7, 30, 31, 90, 151]] = -1
    malignant = np.where(label >= 0, np.isin(np.take(CLASSES, label), MALIGNANT), -1)
    image = rng.normal(size=(n, 8)).astype(np.float32)
    image[:, 0] += 0.8 * (malignant == 1)
    lesion = rng.normal(size=(n, 8)).astype(np.float32)
    split = PATTERN[(np.arange(n) // 2) % len(PATTERN)]
    with FeatureStoreWriter(
        path,
        n=n,
        dims={"image": 8, "lesion": 8},
        config={},
        schema=schema,
        classes=CLASSES,
        official_split=official,
    ) as w:
        w.append(
            lesion_id=[f"L{i}" for i in range(n)],
            patient_id=[f"P{i // 2}" for i in range(n)],
            label=label,
            malignant=malignant.astype(np.int8),
            features={"image": image, "lesion": lesion},
            official_split=split if official else None,
        )
    return path, dict(label=label, malignant=malignant, image=image, lesion=lesion, split=split)


def hand_probe(x, y, train, test) -> dict:
    """The linear probe by hand: standardise, logistic regression (C = 1), argmax."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    proba = model.fit(x[train], y[train]).predict_proba(x[test])
    return {
        "accuracy": accuracy_score(y[test], proba.argmax(1)),
        "auc": roc_auc_score(y[test], proba[:, 1]),
    }


def _metrics(report) -> dict:
    (result,) = report["results"]
    return {k: result["metrics"][k]["mean"] for k in ("accuracy", "auc")}


def test_probe_trains_on_train_and_valid_and_scores_the_test_cases(tmp_path):
    store, data = official_store(tmp_path / "s.h5")
    report = run_probe(store, split="official", methods=["linear"], seeds=[0], features=["image"])
    known = data["malignant"] >= 0
    x, y, split = data["image"][known], data["malignant"][known], data["split"][known]
    train, test = np.isin(split, ("train", "valid")), split == "test"
    expected = hand_probe(x, y, train, test)
    assert _metrics(report) == pytest.approx(expected, rel=1e-9)
    # the reference can tell: without the valid cases the fit (and its AUC) differs
    assert hand_probe(x, y, split == "train", test)["auc"] != pytest.approx(expected["auc"])
    assert report["split"]["kind"] == "official" and report["split"]["official_from"] == "store"
    assert report["split"]["seeds_vary"] == "the classifier only (the split is fixed)"
    seeds = run_probe(store, split="official", methods=["linear"], seeds=[0, 1], features=["image"])
    assert _metrics(seeds) == pytest.approx(expected)  # fixed split, deterministic classifier


def test_split_file_by_lesion_or_patient_equals_the_stores_own(tmp_path):
    store, data = official_store(tmp_path / "s.h5")
    own = _metrics(
        run_probe(store, split="official", methods=["linear"], seeds=[0], features=["image"])
    )
    n = len(data["split"])
    by_lesion = tmp_path / "lesions.csv"
    by_lesion.write_text(
        "id,split\n" + "".join(f"L{i},{data['split'][i]}\n" for i in range(n)) + "L999,test\n"
    )
    by_patient = tmp_path / "patients.csv"
    by_patient.write_text(
        "ID, Split\n" + "".join(f"P{p},{data['split'][2 * p].upper()}\n" for p in range(n // 2))
    )
    for path in (by_lesion, by_patient):
        report = run_probe(
            store, split_file=path, methods=["linear"], seeds=[0], features=["image"]
        )
        assert _metrics(report) == pytest.approx(own, rel=1e-9)
        assert report["split"]["kind"] == "official"
        assert report["split"]["official_from"] == str(path)
    report = run_probe(
        store, split_file=by_lesion, methods=["linear"], seeds=[0], features=["image"]
    )
    assert "--split-file: 1 of its 201 ids are not in the store" in report["warnings"]


def test_split_file_gives_any_store_a_fixed_split(tmp_path):
    """A store without an official split (any dataset) takes one from a CSV."""
    store, data = official_store(tmp_path / "s.h5", official=False, seed=1)
    other = np.roll(PATTERN, 2)  # a different split than the one the data was built with
    split = other[(np.arange(len(data["split"])) // 2) % len(other)]
    path = tmp_path / "split.csv"
    path.write_text("id,split\n" + "".join(f"L{i},{s}\n" for i, s in enumerate(split)))
    report = run_probe(store, split_file=path, methods=["linear"], seeds=[0], features=["image"])
    known = data["malignant"] >= 0
    x, y, split = data["image"][known], data["malignant"][known], split[known]
    expected = hand_probe(x, y, np.isin(split, ("train", "valid")), split == "test")
    assert _metrics(report) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(SlimpError, match="has no official split.*--split-file"):
        run_probe(store, split="official", methods=["linear"], seeds=[0], features=["image"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,split\n" + "".join(f"L{i},train\n" for i in range(150)), "cover 150 of the store's "),
        ("id,split\nX1,train\nX2,test\n", "none of its 2 ids"),
        ("id,split\nL0,training\n", "line 2: split 'training' is not one of train, valid, test"),
        ("id,split\nL0,train\nL0,test\n", "line 3: id 'L0' is listed as both train and test"),
        ("case,fold\nL0,train\n", "needs the columns id and split"),
        ("id,split\n", "lists no id"),
    ],
)
def test_bad_split_files(text, message, tmp_path):
    store, _ = official_store(tmp_path / "s.h5")
    path = tmp_path / "split.csv"
    path.write_text(text)
    with pytest.raises(SlimpError, match=message.replace("(", r"\(")):
        run_probe(store, split_file=path, methods=["linear"], seeds=[0], features=["image"])


def test_partial_split_file_says_how_many(tmp_path):
    store, _ = official_store(tmp_path / "s.h5")
    path = tmp_path / "split.csv"
    path.write_text("id,split\n" + "".join(f"P{p},train\n" for p in range(90)))
    with pytest.raises(SlimpError, match=r"cover 180 of the store's 200 rows; 10 patient_ids"):
        run_probe(store, split_file=path, methods=["linear"], seeds=[0], features=["image"])


def test_split_file_goes_with_split_official_only(tmp_path):
    store, data = official_store(tmp_path / "s.h5")
    path = tmp_path / "split.csv"
    path.write_text("id,split\n" + "".join(f"L{i},{s}\n" for i, s in enumerate(data["split"])))
    with pytest.raises(SlimpError, match="use it with --split official"):
        run_probe(
            store,
            split="random",
            split_file=path,
            methods=["linear"],
            seeds=[0],
            features=["image"],
        )


def test_melanoma_task_is_melanoma_vs_every_other_diagnosis(tmp_path):
    store, data = official_store(tmp_path / "s.h5")
    log = WarningLog()
    with FeatureStore.open(store) as st:
        _, y, _, names, rows = load_probe_data(
            st, label="melanoma", features=None, pseudo=None, warnings=log
        )
        per_row = st.melanoma
    label = data["label"]
    hand = np.array([CLASSES[c] in ("melanoma", "melanoma (in situ)") for c in label])
    assert per_row.tolist() == np.where(label >= 0, hand, -1).tolist()
    assert names == ["other", "melanoma"]
    assert rows.tolist() == np.flatnonzero(label >= 0).tolist()
    assert y.tolist() == hand[label >= 0].astype(int).tolist()
    assert any("5 of 200 rows have unknown label" in w for w in log)
    # BCC is malignant but not a melanoma: the two tasks differ on exactly those rows
    bcc = label == CLASSES.index("basal cell carcinoma")
    assert (data["malignant"] != per_row).tolist() == bcc.tolist()
    report = run_probe(
        store, label="melanoma", split="official", methods=["linear"], seeds=[0], features=["image"]
    )
    known = label >= 0
    split = data["split"][known]
    expected = hand_probe(
        data["image"][known],
        hand[known].astype(int),
        np.isin(split, ("train", "valid")),
        split == "test",
    )
    assert _metrics(report) == pytest.approx(expected, rel=1e-9)
    assert report["results"][0]["label"] == "melanoma"


def test_melanoma_task_needs_the_schemas_melanoma_classes(tmp_path):
    store, _ = official_store(tmp_path / "s.h5", schema={"name": "x"})
    with FeatureStore.open(store) as st:
        assert st.melanoma is None
    with pytest.raises(SlimpError, match="names no melanoma classes"):
        run_probe(store, label="melanoma", methods=["linear"], seeds=[0], features=["image"])


def test_retrieve_official_evaluates_the_test_cases(tmp_path):
    store, data = official_store(tmp_path / "s.h5")
    report = run_retrieval(store, split="official", device="cpu", n_negative=100)
    test = data["split"] == "test"
    assert report["n_queries"] == int(test.sum()) == 80
    assert report["n_patients"] == 40
    assert report["split"]["kind"] == "official"
    # "retrieved": each test image's most similar lesion vector among train + valid rows
    image, lesion = (
        x / np.linalg.norm(x, axis=1, keepdims=True) for x in (data["image"], data["lesion"])
    )
    best = (image[test] @ lesion[~test].T).max(1)
    assert report["similarity_percentiles"]["retrieved"]["50"] == pytest.approx(
        float(np.percentile(best, 50)), abs=1e-5
    )


def sm3_store(path, *, official):
    """An SM3 store with a known answer: each test case's dermoscopic and clinical vectors are
    the same unit vector e_k, and every other case's clinical vector is one of those too. Ranked
    over every case, a test query ties with those clinical vectors; within the test cases its
    own pair is the only match (Acc@1 = 1). Test case 3 lacks its clinical image."""
    n, k = 16, 4
    split = np.array(["test"] * k + ["train"] * 8 + ["valid"] * 4)
    eye = np.eye(8, dtype=np.float32)
    derm = np.stack([eye[i % k] if i < k else eye[4 + i % 4] for i in range(n)])
    clinic = np.stack([eye[i % k] for i in range(n)])
    present = np.ones((n, 2), dtype=np.int8)
    present[3, 1] = 0
    with FeatureStoreWriter(
        path,
        n=n,
        dims={"derm_mm": 8, "clinic_mm": 8},
        config={},
        schema=None,
        classes=["a", "b"],
        variant="sm3",
        modalities=["dermoscopic", "clinical"],
        official_split=official,
    ) as w:
        w.append(
            lesion_id=[f"C{i}" for i in range(n)],
            patient_id=[f"C{i}" for i in range(n)],
            label=np.arange(n) % 2,
            malignant=(np.arange(n) % 2).astype(np.int8),
            features={"derm_mm": derm, "clinic_mm": clinic},
            modalities=present,
            official_split=split if official else None,
        )
    return path, split


def test_pair_matching_ranks_within_the_evaluated_cases(tmp_path):
    store, split = sm3_store(tmp_path / "sm3.h5", official=True)
    every = run_pair_matching(store, device="cpu")
    assert every["pair_matching"]["n"] == 15 and every["split"]["kind"] == "all"
    assert every["pair_matching"]["Acc@1"] < 0.5  # test queries tie with other cases
    official = run_pair_matching(store, split="official", device="cpu")
    pm = official["pair_matching"]
    assert pm["n"] == 3 and pm["Acc@1"] == 1.0 and pm["mean_rank"] == 1.0
    assert official["chance"] == {"Acc@1": 1 / 3, "Acc@5": 1.0, "mean_rank": 2.0, "n": 3}
    assert "1 of 4 cases lack an image: left out" in official["warnings"]
    assert official["split"]["kind"] == "official"
    path = tmp_path / "split.csv"
    path.write_text("id,split\n" + "".join(f"C{i},{s}\n" for i, s in enumerate(split)))
    plain, _ = sm3_store(tmp_path / "plain.h5", official=False)
    from_file = run_pair_matching(plain, split_file=path, device="cpu")
    assert from_file["pair_matching"] == pm
    with pytest.raises(SlimpError, match="has no official split"):
        run_pair_matching(plain, split="official", device="cpu")


def test_store_refuses_rows_without_an_official_split(tmp_path):
    with pytest.raises(SlimpError, match="official_split"):
        with FeatureStoreWriter(
            tmp_path / "s.h5", n=2, dims={"image": 2}, config={}, schema=None, classes=["a"],
            official_split=True,
        ) as w:  # fmt: skip
            w.append(
                lesion_id=["a", "b"], patient_id=["a", "b"], label=[0, 0], malignant=[0, 0],
                features={"image": np.zeros((2, 2))}, official_split=["train", "holdout"],
            )  # fmt: skip
    assert not (tmp_path / "s.h5").exists()


def test_cli_options(tmp_path, run_cli):
    """`--label melanoma`, `--split official` and `--split-file` reach the library."""
    store, data = official_store(tmp_path / "s.h5")
    plain, _ = official_store(tmp_path / "plain.h5", official=False)
    res = run_cli(
        "probe", store, "--label", "melanoma", "--split", "official", "--method", "linear",
        "--features", "image", "--seeds", "0", "--json", tmp_path / "p.json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "melanoma classification" in res.stdout and "from store" in res.stdout
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["results"][0]["label"] == "melanoma"
    assert report["split"]["kind"] == "official"
    res = run_cli("retrieve", plain, "--split", "official")
    assert res.exit_code == 1 and "has no official split" in res.stderr
    path = tmp_path / "split.csv"
    path.write_text("id,split\n" + "".join(f"L{i},{s}\n" for i, s in enumerate(data["split"])))
    res = run_cli("retrieve", plain, "--split-file", path, "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_queries"] == 80 and report["split"]["official_from"] == str(path)


def test_cli_official_split_contract(tmp_path, run_slimp):
    """The installed executable: exit 1 with one line, 2 for --split-file with another split."""
    store, _ = official_store(tmp_path / "s.h5")
    part = tmp_path / "part.csv"
    part.write_text("id,split\nL0,train\nL1,test\n")
    res = run_slimp("probe", store, "--split-file", part)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        f"error: --split-file {part}: its ids cover 2 of the store's 200 rows; 198 lesion_ids "
        "have no split (e.g. 'L10'); give every one a split"
    )
    res = run_slimp("probe", store, "--split-file", part, "--split", "random")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "use it with --split official" in res.stderr


# --- end to end: a Derm7pt release with its index files -> shards -> store -------------------


@pytest.fixture(scope="module")
def official_shards(tmp_path_factory, derm7pt_source):
    from slimp_cli.ingest import ingest

    root = tmp_path_factory.mktemp("release")
    make_release(root / "release_v0", derm7pt_source, every=12)
    out = tmp_path_factory.mktemp("official_shards")
    ingest("derm7pt", root / "release_v0", out, image_size=32)
    return out


def _lesion_splits(shards) -> dict[str, str]:
    index = ShardIndex.open(shards)
    return {
        les["lesion_id"]: les["official_split"]
        for i in range(len(index))
        for les in index.patient(i).lesions
    }


def _store_splits(store) -> list[tuple[str, str]]:
    with h5py.File(store, "r") as f:
        return list(zip(f["lesion_id"].asstr()[()], f["official_split"].asstr()[()]))


def test_embed_writes_each_rows_official_split(official_shards, tmp_path, one_torch_thread):
    from slimp_cli.features.embed import embed
    from slimp_cli.train import pretrain

    run = pretrain(
        official_shards,
        tmp_path / "run",
        model=dict(variant="flat", image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32),
        train=dict(patients_per_batch=8, max_steps=1, device="cpu", workers=0),
    )
    expected = _lesion_splits(official_shards)
    local = embed(run, official_shards, tmp_path / "local.h5", device="cpu")
    streamed = embed(
        run,
        official_shards,
        tmp_path / "streamed.h5",
        device="cpu",
        shard_url=f"{official_shards}/{{name}}",
    )
    for store in (local, streamed):
        rows = _store_splits(store)
        assert len(rows) == len(expected) == 55
        assert all(split == expected[lesion] for lesion, split in rows)
    counts = json.loads((official_shards / "manifest.json").read_text())["counts"]
    assert counts["official_split"] == {
        s: sum(v == s for v in expected.values()) for s in ("train", "valid", "test")
    }
    report = run_probe(local, split="official", methods=["linear"], seeds=[0], features=["image"])
    assert report["split"]["kind"] == "official"


def test_sm3_store_carries_the_official_split(official_shards, tmp_path, run_cli):
    from slimp_cli.features.embed import embed
    from slimp_cli.train import pretrain

    run = pretrain(
        official_shards,
        tmp_path / "run",
        model=dict(image_model="resnet_test", img_size=32, proj_dim=16, label_dim=32),
        train=dict(method="sm3", patients_per_batch=16, max_steps=1, device="cpu", workers=0),
    )
    store = embed(run, official_shards, tmp_path / "sm3.h5", device="cpu")
    expected = _lesion_splits(official_shards)
    rows = _store_splits(store)
    assert len(rows) == 55 and all(split == expected[case] for case, split in rows)
    res = run_cli(
        "probe", store, "--task", "derm7pt-multilabel", "--split", "official",
        "--method", "linear", "--seeds", "0", "--json", tmp_path / "ml.json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ml.json").read_text())
    assert report["split"]["kind"] == "official" and report["split"]["official_from"] == "store"


def test_holdout_official_keeps_the_official_test_cases_out_of_pretraining(
    official_shards, tmp_path, one_torch_thread
):
    """`--holdout official`: pre-training holds out exactly the patients of the official test
    split, so `--split official` scores cases no training stage saw (SM3's Table I rows)."""
    from slimp_cli.data.holdout import read_holdout
    from slimp_cli.features.embed import embed
    from slimp_cli.train import pretrain

    run = pretrain(
        official_shards,
        tmp_path / "run",
        model=dict(image_model="resnet_test", img_size=32, proj_dim=16, label_dim=32),
        train=dict(
            method="sm3", holdout="official", patients_per_batch=16, max_steps=1, device="cpu",
            workers=0,
        ),
    )  # fmt: skip
    index = ShardIndex.open(official_shards)
    test_patients = {
        str(index.patient(i).patient_id)
        for i in range(len(index))
        if any(les["official_split"] == "test" for les in index.patient(i).lesions)
    }
    holdout = read_holdout(run)
    assert holdout.rule == "official" and set(holdout.patient_ids) == test_patients
    assert 0 < len(test_patients) < len(index)
    store = embed(run, official_shards, tmp_path / "sm3.h5", device="cpu")
    report = run_probe(store, split="official", methods=["linear"], seeds=[0], features=["image"])
    assert report["split"]["test_rows_seen_in_pretraining"] == 0
    # the default random holdout leaves most official test cases in pre-training
    run2 = pretrain(
        official_shards,
        tmp_path / "run2",
        model=dict(image_model="resnet_test", img_size=32, proj_dim=16, label_dim=32),
        train=dict(method="sm3", patients_per_batch=16, max_steps=1, device="cpu", workers=0),
    )
    store2 = embed(run2, official_shards, tmp_path / "sm3-2.h5", device="cpu")
    report2 = run_probe(store2, split="official", methods=["linear"], seeds=[0], features=["image"])
    assert report2["split"]["test_rows_seen_in_pretraining"] > 0


def test_holdout_official_contract(synth_shards, tmp_path, run_slimp):
    common = ("--out", tmp_path / "r", "--max-steps", "1", "--device", "cpu")
    res = run_slimp("pretrain", synth_shards, *common, "--holdout", "official")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "no official split" in lines[0] and "Traceback" not in res.stderr
    res = run_slimp("pretrain", synth_shards, *common, "--holdout", "sometimes")
    assert res.returncode == 2 and "fraction" in res.stderr and "Traceback" not in res.stderr
