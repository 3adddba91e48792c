"""Every user error is one line (issue 13, part 6): each bad input of the issue runs the
installed `slimp` in a subprocess and must exit 1 with exactly one stderr line, starting
`error: ` and naming the file, row or option, and no traceback.

The subprocesses are independent, so the module starts them all at once (a few at a time)
and each test then checks its own result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from conftest import _run_slimp

# (case id, arguments from the context, text the error line must hold)
CASES = [
    ("ingest-out-below-a-file", lambda c: ["ingest", "synth", c.cohort, c.afile / "out"],
     "afile/out: cannot create the output folder"),
    ("ingest-schema-not-utf8", lambda c: ["ingest", "csv", c.cohort, c.base / "o1", "--schema",
                                          c.latin1], "latin1.json: not UTF-8 text (byte 0xe9"),
    ("ingest-image-size-100000", lambda c: ["ingest", "synth", c.cohort, c.base / "o2",
                                            "--image-size", "100000"],
     "--image-size must be between 16 and 4096 pixels (got 100000)"),
    ("schema-infer-missing-file", lambda c: ["schema", "infer", c.base / "nope.csv"],
     "nope.csv: no such file"),
    ("schema-infer-folder", lambda c: ["schema", "infer", c.cohort],
     "{cohort}: is a folder, not a table"),
    ("schema-infer-into-missing-folder", lambda c: ["schema", "infer", c.cohort / "metadata.csv",
                                                    "--out", c.base / "nodir" / "x.json"],
     "nodir/x.json: cannot write"),
    ("synth-onto-a-file", lambda c: ["synth", c.afile], "afile: exists and is not a folder"),
    ("synth-seed-negative", lambda c: ["synth", c.base / "c1", "--seed", "-1"],
     "--seed must be an integer from 0 to 4294967295 (got -1)"),
    ("pretrain-out-onto-a-file", lambda c: ["pretrain", c.shards, "--out", c.afile],
     "--out " + "{afile}: exists and is not a folder"),
    ("pretrain-seed-huge", lambda c: ["pretrain", c.shards, "--out", c.base / "r1", "--seed",
                                      str(10**20), "--device", "cpu"],
     "seed must be an integer from 0 to 4294967295 (got 100000000000000000000)"),
    ("pretrain-vocab-null", lambda c: ["pretrain", c.vocab_null, "--out", c.base / "r2",
                                       "--device", "cpu"],
     "schema.json: lesion_features: feature 'site' has vocab None"),
    ("pretrain-cnn-stem-unknown", lambda c: ["pretrain", c.shards, "--out", c.base / "r3",
                                             "--method", "sm3", "--cnn-stem", "x", "--device",
                                             "cpu"],
     "unknown cnn_stem 'x'; choose one of standard, small"),
    # embed --workers -1 is bad usage (exit 2, Typer's message): tests/test_cli_contract.py
    ("embed-out-below-a-file", lambda c: ["embed", c.base / "run", c.shards, "--out",
                                          c.afile / "e.h5"], "afile: exists and is not a folder"),
    ("retrieve-random-split-of-3-rows", lambda c: ["retrieve", c.three, "--split", "random",
                                                   "--device", "cpu"],
     "three.h5: retrieval needs at least 2 lesions"),
    ("retrieve-seed-negative", lambda c: ["retrieve", c.store, "--seed", "-1"],
     "--seed must be an integer from 0 to 4294967295 (got -1)"),
    ("probe-seeds-negative", lambda c: ["probe", c.store, "--seeds", "0,-1"],
     "--seeds must be an integer from 0 to 4294967295 (got -1)"),
    ("probe-seeds-huge", lambda c: ["probe", c.store, "--seeds", str(2**40)],
     f"--seeds must be an integer from 0 to 4294967295 (got {2**40})"),
    ("probe-C-negative", lambda c: ["probe", c.store, "--C", "-1"],
     "--C must be a finite number > 0 (got -1.0)"),
    ("probe-knn-temperature-0", lambda c: ["probe", c.store, "--knn-temperature", "0"],
     "--knn-temperature must be a finite number > 0 (got 0.0)"),
    ("probe-nan-features", lambda c: ["probe", c.nan, "--device", "cpu"],
     "nan.h5: features/image holds NaN or infinite values in 1 row(s), first row 7 (lesion L7)"),
    # issue 21: a store whose datasets are shorter than its index; a decompression bomb
    ("probe-short-dataset", lambda c: ["probe", c.short, "--device", "cpu"],
     "short.h5: features/image has 39 rows but the store's index (lesion_id) has 40; the store "
     "is damaged"),
    ("encode-decompression-bomb", lambda c: ["encode", c.run, "--image", c.bomb],
     "bomb.png: image too large: 100000 x 100000 pixels (limit 89,478,485; raise it with "
     "--max-image-pixels"),
    ("encode-max-image-pixels", lambda c: ["encode", c.run, "--image", c.small,
                                           "--max-image-pixels", "100"],
     "small.png: image too large: 32 x 32 pixels (limit 100;"),
]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory, synth_dir, synth_shards):
    from conftest import _write_store

    base = tmp_path_factory.mktemp("one_line")
    afile = base / "afile"
    afile.write_text("a regular file\n")
    latin1 = base / "latin1.json"
    latin1.write_bytes(b'{"name": "caf\xe9"}')
    vocab_null = shutil.copytree(synth_shards, base / "vocab_null")
    schema = json.loads((vocab_null / "schema.json").read_text())
    next(f for f in schema["lesion_features"] if f["name"] == "site")["vocab"] = None
    (vocab_null / "schema.json").write_text(json.dumps(schema))
    rng = np.random.default_rng(0)

    def store(name: str, n: int, nan_row: int | None = None):
        feats = rng.normal(size=(n, 4)).astype(np.float32)
        if nan_row is not None:
            feats[nan_row, 2] = np.nan
        return _write_store(
            base / name,
            features={"image": feats, "lesion": feats[:, ::-1].copy()},
            patient_id=np.arange(n) // 2,
            label=np.arange(n) % 2,
        )

    short = store("short.h5", 40)
    with h5py.File(short, "a") as f:
        f["features/image"].resize(39, axis=0)
    from test_outputs import _png_header

    bomb = base / "bomb.png"
    bomb.write_bytes(_png_header(100_000, 100_000))
    small = base / "small.png"
    small.write_bytes(next((synth_dir / "images").iterdir()).read_bytes())
    from conftest import TINY_MODEL, _tiny_train

    from slimp_cli.train import pretrain

    run = pretrain(synth_shards, base / "tiny-run", model=TINY_MODEL, train=_tiny_train(1))
    ctx = SimpleNamespace(
        short=short,
        bomb=bomb,
        small=small,
        run=run,
        base=base,
        afile=afile,
        latin1=latin1,
        cohort=synth_dir,
        shards=synth_shards,
        vocab_null=vocab_null,
        store=store("store.h5", 40),
        three=store("three.h5", 3),
        nan=store("nan.h5", 40, nan_row=7),
    )

    def run(case) -> subprocess.CompletedProcess:
        name, args, _ = case
        return _run_slimp(*args(ctx), timeout=300)

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip([c[0] for c in CASES], pool.map(run, CASES)))
    return ctx, done


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line(results, case):
    ctx, done = results
    name, _, expected = case
    res = done[name]
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert expected.format(**vars(ctx)) in lines[0], lines[0]


def test_a_stray_os_error_is_one_line(run_cli, monkeypatch, tmp_path):
    """cli.main's last line of defence: an OSError the library did not name is still one line
    (e.g. PermissionError on a folder that is not writable, which root never sees)."""
    import slimp_cli.ingest.synth as synth

    target = tmp_path / "cohort"

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(synth, "generate_cohort", denied)
    res = run_cli("synth", target)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip().splitlines() == [f"error: {target}: Permission denied"]
