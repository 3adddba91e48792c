"""Stores are never modified in place: kill -9 during extrapolate, embed's --out checks, the
writer's rename failure (issue 13, part 1)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
from conftest import TINY_MODEL, _tiny_train, slimp_executable

from slimp_cli.core.errors import SlimpError
from slimp_cli.features.embed import embed
from slimp_cli.features.store import FeatureStore, FeatureStoreWriter

D = 8


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def _stores(tmp_path, write_store, n: int):
    """An n-row image-only target and a small nested reference (with its phenotype layer)."""
    rng = np.random.default_rng(0)
    n_ref = 64
    ref = write_store(
        tmp_path / "ref.h5",
        features={k: rng.normal(size=(n_ref, D)).astype(np.float32) for k in LEVELS},
        patient_id=np.arange(n_ref) // 2,
        label=rng.integers(0, 2, n_ref),
        phenotype=(
            rng.normal(size=(D, 2 * D)).astype(np.float32),
            rng.normal(size=D).astype(np.float32),
        ),
    )
    target = tmp_path / "target.h5"
    with FeatureStoreWriter(
        target, n=n, dims={"image": D}, config={}, schema=None, classes=["a", "b"]
    ) as w:
        for s in range(0, n, 10_000):
            e = min(n, s + 10_000)
            w.append(
                lesion_id=[f"L{i}" for i in range(s, e)],
                patient_id=[f"P{i}" for i in range(s, e)],
                label=np.arange(s, e) % 2,
                malignant=np.arange(s, e) % 2,
                features={"image": rng.normal(size=(e - s, D)).astype(np.float32)},
            )
    return ref, target


LEVELS = ("image", "lesion", "patient")


def test_kill_9_during_extrapolate_leaves_the_target_bit_identical(tmp_path, write_store):
    # 40,000 rows in blocks of 4: the process is still writing when it is killed
    ref, target = _stores(tmp_path, write_store, 40_000)
    before = _digest(target)
    with h5py.File(target, "r") as f:
        image = f["features/image"][()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [slimp_executable(), "extrapolate", ref, target, "--device", "cpu", "--chunk-size", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    pattern = f".{target.name}.tmp-{proc.pid}-*"  # unpredictable: paths.temp_file
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(pattern)) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert list(tmp_path.glob(pattern)), "extrapolate never started writing its temporary store"
    time.sleep(0.3)  # let it write some pseudo rows
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    # killed while writing (a process that had finished would have returned 0)
    assert proc.returncode == -signal.SIGKILL
    assert _digest(target) == before
    with h5py.File(target, "r") as f:  # opens: never opened for writing
        np.testing.assert_array_equal(f["features/image"][()], image)
        assert "pseudo" not in f
    with FeatureStore.open(target) as st:
        assert st.n == 40_000 and st.pseudo_strategies == []
    # the next writer of the target removes what the killed one left, and says so once
    res = subprocess.run(
        [slimp_executable(), "extrapolate", ref, target, "--device", "cpu", "--strategy", "il"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("note: removed 1 temporary file(s)") == 1, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.h5", "target.h5"]


def test_extrapolate_reruns_do_not_grow_the_store(tmp_path, write_store, run_slimp):
    from slimp_cli.eval.extrapolate import extrapolate

    ref, target = _stores(tmp_path, write_store, 5_000)
    res = run_slimp("extrapolate", ref, target, "--device", "cpu", "--chunk-size", "500")
    assert res.returncode == 0, res.stderr
    sizes = [target.stat().st_size]
    for strategy in ("ilp", "il", "il", "ilp"):
        extrapolate(ref, target, strategy=strategy, device="cpu")
        sizes.append(target.stat().st_size)
    assert sizes[1] == sizes[0]  # the same strategy again: replaced, not appended
    assert sizes[3] == sizes[2] and sizes[4] == sizes[3]
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []


def test_writer_rename_failure_leaves_no_complete_temp(tmp_path):
    out = tmp_path / "s.h5"
    w = FeatureStoreWriter(out, n=1, dims={"image": 2}, config={}, schema=None, classes=["a"])
    w.append(
        lesion_id=["x"],
        patient_id=["p"],
        label=[0],
        malignant=[0],
        features={"image": np.zeros((1, 2), np.float32)},
    )
    (out / "inside").mkdir(parents=True)  # a non-empty folder took the store's name
    with pytest.raises(SlimpError, match="appeared while this command ran"):
        w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    assert out.is_dir()


def test_writer_refuses_a_folder_before_writing(tmp_path):
    (tmp_path / "s.h5").mkdir()
    with pytest.raises(SlimpError, match="is a folder"):
        FeatureStoreWriter(
            tmp_path / "s.h5", n=1, dims={"image": 2}, config={}, schema=None, classes=["a"]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


@pytest.fixture(scope="module")
def synth_run(synth_shards, tmp_path_factory):
    """One step of a tiny nested model on the generated cohort."""
    from slimp_cli.train import pretrain

    out = tmp_path_factory.mktemp("store_safety") / "run"
    return pretrain(synth_shards, out, model=TINY_MODEL, train=_tiny_train(1))


def test_embed_refuses_an_existing_out_before_computing(
    synth_run, synth_shards, tmp_path, run_slimp
):
    store = tmp_path / "feats.h5"
    store.write_bytes(b"precious")
    res = run_slimp("embed", synth_run, synth_shards, "--out", store, "--device", "cpu")
    line = _one_line_error(res)
    assert str(store) in line and "--overwrite" in line
    assert store.read_bytes() == b"precious"
    folder = tmp_path / "folder.h5"
    folder.mkdir()
    res = run_slimp("embed", synth_run, synth_shards, "--out", folder, "--device", "cpu")
    assert "is a folder" in _one_line_error(res)
    # refused before computing: no temporary store was started beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.h5", "folder.h5"]
    assert list(folder.iterdir()) == []
    embed(synth_run, synth_shards, store, device="cpu", overwrite=True)
    lesions = json.loads((synth_shards / "manifest.json").read_text())["counts"]["lesions"]
    with FeatureStore.open(store) as st:
        assert st.n == lesions and st.feature_names == ["image", "lesion", "patient"]
