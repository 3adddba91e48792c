"""Shards streamed from URLs (`--shard-url`, slimp_cli/data/shard_stream.py, train/streamed.py,
features/embed_streamed.py): the patient index, the epoch's shard split over ranks and workers, held-out
patients, streamed pretrain and embed against the local path, errors.

The PAD subset is ingested into 9 shards (50 patients each); "remote" folders hold only its
small files (manifest.json, schema.json, with or without index.json) and the templates point
at the tars (`{dir}/{name}`, `pipe:cat {dir}/{name}`), so nothing is downloaded.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.holdout import choose_holdout, patient_positives
from slimp_cli.data.shard_stream import (
    INDEX,
    ShardSource,
    entries_from_index,
    epoch_shards,
    index_document,
    read_patient_index,
    stream_patient_index,
)
from slimp_cli.data.shards import ShardIndex
from slimp_cli.features.embed import embed
from slimp_cli.models import build_model
from slimp_cli.models.config import ModelConfig
from slimp_cli.train import TrainConfig
from slimp_cli.train.batches import GROUP_STRIDE
from slimp_cli.train.data import LocalBatches
from slimp_cli.train.distributed import DistInfo
from slimp_cli.train.loop import local_batches
from slimp_cli.train.session import TrainingPatients
from slimp_cli.train.streamed import StreamBatches, stream_batches

B = 8


def write_index(data: Path) -> None:
    """index.json from a local ShardIndex, unless ingest already wrote one."""
    if not (data / INDEX).exists():
        doc = index_document(entries_from_index(ShardIndex.open(data)))
        (data / INDEX).write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, pad_source) -> Path:
    """The PAD subset in 9 shards, with index.json."""
    from slimp_cli.ingest import ingest

    out = tmp_path_factory.mktemp("pad9")
    ingest("pad-ufes-20", pad_source, out, image_size=32, workers=2, max_patients_per_shard=50)
    write_index(out)
    return out


def small_files(shards: Path, out: Path, *, index: bool) -> Path:
    """A folder with the ingest's small files alone (no tars): what stays local."""
    out.mkdir()
    for name in ("manifest.json", "schema.json") + ((INDEX,) if index else ()):
        shutil.copy(shards / name, out / name)
    return out


@pytest.fixture(scope="module")
def remote(shards, tmp_path_factory) -> Path:
    """manifest.json, schema.json, index.json; the tars stay in `shards`."""
    return small_files(shards, tmp_path_factory.mktemp("remote") / "data", index=True)


@pytest.fixture(scope="module")
def bare(shards, tmp_path_factory) -> Path:
    """manifest.json and schema.json only (an ingest from before index.json)."""
    return small_files(shards, tmp_path_factory.mktemp("bare") / "data", index=False)


@pytest.fixture(scope="module")
def model(shards):
    return build_model(ModelConfig(variant="nested", **TINY_MODEL), ShardIndex.open(shards).schema)


def batches_of(source, model, *, holdout=0.1, rank=0, world=1, workers=0, seed=0):
    """The streamed training batches of `source` (as pretrain builds them) for a fake rank."""
    entries = source.patient_entries()
    ids, positive = [e.patient_id for e in entries], [e.positive for e in entries]
    held = choose_holdout(ids, positive, fraction=holdout, seed=0)
    patients = TrainingPatients(
        holdout=held,
        use=[i for i, pid in enumerate(ids) if pid not in held],
        validation=[i for i, pid in enumerate(ids) if pid in held],
        schema=source.schema,
    )
    train = TrainConfig(
        patients_per_batch=B, lesions_per_patient=4, workers=workers, seed=seed, device="cpu"
    )
    info = DistInfo(rank=rank, world_size=world)
    return stream_batches(
        source,
        model=model,
        schema=source.schema,
        patients=patients,
        train=train,
        info=info,
        pin_memory=False,
    )


def raw_epoch(batches: StreamBatches, epoch: int, start: int = 0, workers: int = 0) -> list[dict]:
    """The stream's items of one epoch (batch + step, keys, shards, worker), as the loop
    would take them."""
    batches.stream.set_epoch(epoch, start)
    if workers:
        items = iter(
            torch.utils.data.DataLoader(batches.stream, batch_size=None, num_workers=workers)
        )
    else:
        items = iter(batches.stream)
    out = [next(items) for _ in range(start, batches.steps_per_epoch)]
    assert all("error" not in item for item in out), out
    return out


def template(kind: str, shards: Path) -> str:
    return {"path": f"{shards}/{{name}}", "pipe": f"pipe:cat {shards}/{{name}}"}[kind]


# ----------------------------------------------------------------------------- patient index


def test_index_json_equals_the_streaming_pass_and_the_shard_index(shards, bare, remote):
    index = ShardIndex.open(shards)
    local = entries_from_index(index)
    assert read_patient_index(shards) == local
    assert read_patient_index(remote) == local
    assert read_patient_index(bare) is None
    notes = []
    source = ShardSource.open(bare, template("pipe", shards))
    assert source.patient_entries(note=notes.append) == local  # one JSON-only pass
    assert len(notes) == 1 and "no index.json" in notes[0]
    assert stream_patient_index(source) == local
    assert source.patient_entries(note=notes.append) == local and len(notes) == 1  # kept
    # what the held-out split is drawn from: the same ids and positives as the local path
    ids, positive = patient_positives(index)
    assert [e.patient_id for e in local] == ids and [e.positive for e in local] == positive
    assert len(local) == 418 and len({e.shard for e in local}) == 9


def test_an_index_that_disagrees_with_the_manifest_is_refused(shards, tmp_path):
    folder = small_files(shards, tmp_path / "data", index=True)
    doc = json.loads((folder / INDEX).read_text())
    doc["patients"] = doc["patients"][1:]
    (folder / INDEX).write_text(json.dumps(doc))
    with pytest.raises(SlimpError, match="shard-000000.tar has 49 patients where manifest"):
        read_patient_index(folder)
    (folder / INDEX).write_text(json.dumps({"format": "other"}))
    with pytest.raises(SlimpError, match="not a slimp patient index"):
        read_patient_index(folder)


def test_a_template_must_name_the_shard(shards):
    with pytest.raises(SlimpError, match=r"\{name\}"):
        ShardSource.open(shards, "pipe:cat /data/shard.tar")


# ----------------------------------------------------------------------------- one epoch


def _first_pass(stream, role=0, workers=1):
    """The records of the first pass over a worker's shards (patients() repeats passes)."""
    passes = stream.patients(stream.shards(role, workers), role)
    return (rec for _, rec in itertools.takewhile(lambda cr: cr[0] == 0, passes))


@pytest.mark.parametrize("kind", ["path", "pipe"])
def test_every_patient_streams_exactly_once_per_pass(kind, shards, remote, model):
    source = ShardSource.open(remote, template(kind, shards))
    batches = batches_of(source, model, holdout=0.0)
    stream = batches.stream
    one_pass = [rec.key for rec in _first_pass(stream)]
    everyone = [e.key for e in source.patient_entries()]
    assert Counter(one_pass) == Counter(everyone)
    # the epoch: 418 // 8 = 52 full batches, no patient twice
    keys = [k for item in raw_epoch(batches, 0) for k in item["keys"]]
    assert batches.steps_per_epoch == 418 // B and len(keys) == 52 * B
    assert len(set(keys)) == len(keys) and set(keys) <= set(everyone)


def test_two_workers_read_disjoint_shards(shards, remote, model):
    batches = batches_of(ShardSource.open(remote, template("pipe", shards)), model, workers=2)
    assert batches.workers == 2
    items = raw_epoch(batches, 0, workers=2)
    readers: dict[str, set[int]] = {}
    for item in items:
        for shard in item["shards"]:
            readers.setdefault(shard, set()).add(item["worker"])
    assert all(len(w) == 1 for w in readers.values()), readers  # one worker per shard
    assert {item["worker"] for item in items} == {0, 1}
    assert [item["step"] for item in items] == list(range(batches.steps_per_epoch))
    mine = [set(batches.stream.shards(w, 2)) for w in (0, 1)]
    assert not mine[0] & mine[1] and mine[0] | mine[1] == set(batches.stream.source.names)
    for shard, (worker,) in readers.items():
        assert shard in mine[worker]


def test_ranks_stream_disjoint_shards_for_the_same_number_of_steps(shards, remote, model):
    source = ShardSource.open(remote, template("path", shards))
    ranks = [batches_of(source, model, rank=r, world=2) for r in (0, 1)]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == 376 // (2 * B)
    mine = [set(b.stream.shards(0, 1)) for b in ranks]
    assert not mine[0] & mine[1] and mine[0] | mine[1] == set(source.names)
    for r, b in enumerate(ranks):
        assert {rec.shard for rec in _first_pass(b.stream)} == mine[r]
        # both ranks make every step (a rank whose shards run out reads them again)
        assert len(list(b.epoch(0))) == b.steps_per_epoch
    # positions in the global batch: rank r's patients are r*B .. r*B + B - 1 (lesion groups)
    batch = raw_epoch(ranks[1], 0)[0]["batch"]
    assert set((batch["lesion_group"] // GROUP_STRIDE).tolist()) == set(range(B, 2 * B))


def test_held_out_patients_never_stream_and_the_shard_order_follows_the_epoch(
    shards, remote, model
):
    source = ShardSource.open(remote, template("pipe", shards))
    batches = batches_of(source, model)
    held = batches.stream.held_out
    assert len(held) == 42
    key_of = {e.key: e.patient_id for e in source.patient_entries()}
    for epoch in (0, 1):
        items = raw_epoch(batches, epoch)
        streamed = {key_of[k] for item in items for k in item["keys"]}
        assert not streamed & held and len(streamed) == 376 // B * B
        assert all(item["batch"]["patient_index"].max() == B - 1 for item in items)
    orders = [epoch_shards(source.names, seed=0, epoch=e) for e in (0, 1)]
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(source.names)
    assert orders[0] == epoch_shards(source.names, seed=0, epoch=0)  # same seed, same order
    assert orders[0] != epoch_shards(source.names, seed=1, epoch=0)
    for epoch in (0, 1):  # one process reads its shards in the epoch's order
        batches.stream.set_epoch(epoch)
        read = list(dict.fromkeys(rec.shard for rec in _first_pass(batches.stream)))
        assert read == orders[epoch]


def test_a_streamed_batch_is_the_local_batch_layout(shards, remote, model):
    source = ShardSource.open(remote, template("path", shards))
    streamed = next(iter(batches_of(source, model).epoch(0)))
    train = TrainConfig(patients_per_batch=B, lesions_per_patient=4, workers=0, device="cpu")
    index = ShardIndex.open(shards)
    local, _, _ = local_batches(
        model, index.schema, index, None, train, DistInfo(), pin_memory=False
    )
    assert isinstance(local, LocalBatches)
    reference = next(iter(local.epoch(0)))
    assert set(streamed) == set(reference)
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            assert streamed[key].dtype == value.dtype, key
            assert streamed[key].shape[1:] == value.shape[1:], key
        else:
            assert type(streamed[key]) is type(value), key
    assert streamed["images"].dtype == torch.uint8
    assert streamed["patient_tab"].categorical.shape[0] == B


def test_the_simclr_baseline_streams_single_images(shards, remote):
    schema = ShardIndex.open(shards).schema
    simclr = build_model(ModelConfig(variant="image", **TINY_MODEL), schema)
    batches = batches_of(ShardSource.open(remote, template("path", shards)), simclr)
    held = batches.stream.held_out
    images = sum(
        e.images for e in batches.stream.source.patient_entries() if e.patient_id not in held
    )
    assert batches.steps_per_epoch == images // (B * 4)  # B x N single images a step
    item = raw_epoch(batches, 0)[0]
    assert item["batch"]["images"].shape[0] == item["batch"]["images2"].shape[0] == B * 4
    assert item["batch"]["patient_index"].tolist() == list(range(B * 4))


def test_a_resumed_epoch_replays_its_stream(shards, remote, model):
    """Inside an epoch, resuming at step k gives the batches k.. of the uninterrupted epoch
    (2 workers: the first worker asked takes the role that made step k)."""
    batches = batches_of(ShardSource.open(remote, template("pipe", shards)), model, workers=2)
    whole = raw_epoch(batches, 1, workers=2)
    for k in (5, 6):
        rest = raw_epoch(batches, 1, start=k, workers=2)
        assert [i["step"] for i in rest] == list(range(k, batches.steps_per_epoch))
        assert [i["keys"] for i in rest] == [i["keys"] for i in whole[k:]]
        assert torch.equal(rest[0]["batch"]["images"], whole[k]["batch"]["images"])


# ----------------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def streamed_run(shards, remote, tmp_path_factory, run_slimp_module):
    """`slimp pretrain REMOTE --shard-url 'pipe:cat SHARDS/{name}'` for one epoch."""
    out = tmp_path_factory.mktemp("streamed") / "run"
    res = run_slimp_module(
        "pretrain", remote, "--out", out, "--shard-url", template("pipe", shards),
        "--image-model", "vit_test", "--input-size", "32", "--embed-dim", "32", "--tab-dim",
        "32", "-B", "32", "-N", "4", "--epochs", "1", "--lr", "1e-3", "--device", "cpu",
        "--workers", "1", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def run_slimp_module():
    from conftest import _run_slimp

    return _run_slimp


def test_streamed_pretrain_writes_a_run_with_the_local_split(streamed_run, shards, remote):
    assert (streamed_run / "checkpoint-last.pt").is_file()
    index = ShardIndex.open(shards)
    local = choose_holdout(*patient_positives(index), fraction=0.1, seed=0)  # what pretrain draws
    assert json.loads((streamed_run / "holdout.json").read_text()) == local.to_dict()
    config = json.loads((streamed_run / "config.json").read_text())
    assert config["data"]["shard_url"] == template("pipe", shards)
    assert config["data"]["manifest_sha256"]  # the data checks of --resume still apply
    assert config["stream"]["steps_per_epoch"] == 376 // 32
    assert config["stream"]["loader_workers"] == 1
    # Standardised with the training patients alone, pooled from index.json's moments: the
    # statistics the local path computes from their records, to float rounding.
    assert config["holdout"]["statistics_from"] == "training patients"
    held = set(local.patient_ids)
    patients, lesions = [], []
    for i in range(len(index)):
        rec = index.patient(i)
        if rec.patient_id not in held:
            patients.append({**rec.fields, **rec.derived})
            lesions += [les.get("fields") or {} for les in rec.lesions]
    expected = index.schema.with_statistics(patients, lesions).to_dict()
    got = config["schema"]
    for level in ("patient_features", "derived_patient_features", "lesion_features"):
        for mine, want in zip(got[level], expected[level], strict=True):
            if want["type"] == "numerical":
                assert mine["mean"] == pytest.approx(want["mean"], rel=1e-9, abs=1e-12)
                assert mine["std"] == pytest.approx(want["std"], rel=1e-9, abs=1e-12)
    all_patients = index.schema.to_dict()["lesion_features"]
    assert any(
        f["type"] == "numerical" and f["mean"] != m["mean"]
        for f, m in zip(all_patients, got["lesion_features"])
    ), "the held-out patients' values must not shape the statistics"
    rows = [json.loads(line) for line in (streamed_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 376 // 32 and not any("val_loss" in r for r in rows)


def _store(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: out.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None
        )
        out["config"] = json.loads(f.attrs["config"])
        out["attrs"] = {k: f.attrs[k] for k in f.attrs if k != "config"}
    return out


def test_streamed_embed_equals_the_local_store(streamed_run, shards, remote, tmp_path):
    local = _store(embed(streamed_run, shards, tmp_path / "local.h5", batch_size=50, device="cpu"))
    streamed = _store(
        embed(
            streamed_run, remote, tmp_path / "streamed.h5", batch_size=50, device="cpu",
            workers=2, shard_url=template("pipe", shards),
        )
    )  # fmt: skip
    assert set(local) == set(streamed)
    assert "split" in local and "features/patient" in local
    for name, value in local.items():
        if name in ("config", "attrs"):
            continue
        if value.dtype.kind == "f":
            np.testing.assert_allclose(streamed[name], value, atol=1e-5, err_msg=name)
        else:
            assert np.array_equal(streamed[name], value), name
    assert streamed["config"].pop("shard_url") == template("pipe", shards)
    local["config"].pop("data"), streamed["config"].pop("data")
    assert streamed["config"] == local["config"]
    assert {k: str(v) for k, v in streamed["attrs"].items()} == {
        k: str(v) for k, v in local["attrs"].items()
    }


def test_streamed_adapt_falls_out(streamed_run, shards, remote, tmp_path):
    from slimp_cli.train import adapt_run

    result = adapt_run(
        streamed_run, remote, tmp_path / "adapted",
        train=dict(patients_per_batch=16, lesions_per_patient=4, epochs=1, max_steps=2,
                   device="cpu", workers=0),
        shard_url=template("path", shards),
    )  # fmt: skip
    assert result.step == 2
    config = json.loads((tmp_path / "adapted" / "config.json").read_text())
    assert config["data"]["shard_url"] == template("path", shards) and "stream" in config


@pytest.mark.parametrize("command", ["pretrain", "embed"])
def test_a_template_without_name_is_bad_usage(command, remote, run_cli, tmp_path):
    args = ["RUN", remote, "--out", tmp_path / "x.h5"] if command == "embed" else [remote, "--out", tmp_path / "run"]  # fmt: skip
    res = run_cli(command, *args, "--shard-url", "pipe:cat /data/shard.tar")
    assert res.exit_code == 2, res.output
    text = " ".join(res.stderr.split())
    assert "Usage: slimp" in text and "has no {name}" in text and "Traceback" not in text
    assert not (tmp_path / "run").exists()


def test_a_failing_url_is_one_line_naming_the_shard(streamed_run, remote, run_cli, tmp_path):
    res = run_cli(
        "pretrain", remote, "--out", tmp_path / "run", "--shard-url", "pipe:false {name}",
        "--image-model", "vit_test", "--input-size", "32", "-B", "8", "--epochs", "1",
        "--device", "cpu", "--workers", "0", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith("error: shard shard-0000") and res.stderr.count("\n") == 1
    assert "pipe:false shard-0000" in res.stderr and "Traceback" not in res.output
    res = run_cli(
        "embed", streamed_run, remote, "--out", tmp_path / "x.h5", "--shard-url",
        "pipe:false {name}", "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.output
    assert res.stderr.startswith("error: shard shard-000000.tar (pipe:false shard-000000.tar)")
    assert not (tmp_path / "x.h5").exists()


def test_streaming_refuses_what_it_cannot_do(shards, remote, streamed_run, tmp_path):
    from slimp_cli.train import pretrain

    url = template("path", shards)
    with pytest.raises(SlimpError, match="--verify reads local shard files"):
        pretrain(remote, tmp_path / "a", shard_url=url, verify=True)
    with pytest.raises(SlimpError, match="SM3"):
        pretrain(remote, tmp_path / "b", shard_url=url, train={"method": "sm3", "device": "cpu"})
    with pytest.raises(SlimpError, match="--resume it the same way"):
        pretrain(shards, streamed_run, resume=True, train={"device": "cpu"})
    # a cut stream (a shard missing its first patient): its counts fall short of the manifest
    cut = tmp_path / "cut"
    cut.mkdir()
    with (
        tarfile.open(shards / "shard-000000.tar") as src,
        tarfile.open(cut / "shard-000000.tar", "w") as dst,
    ):
        members = src.getmembers()
        first = members[0].name.split(".")[0]
        for member in members:
            if member.name.split(".")[0] != first:
                dst.addfile(member, src.extractfile(member))
    source = ShardSource.open(remote, f"pipe:cat {cut}/{{name}}")
    with pytest.raises(SlimpError, match="streamed 49 patients where manifest.json lists 50"):
        list(source.read("shard-000000.tar"))


RESUME_TRAIN = dict(
    patients_per_batch=32,
    lesions_per_patient=3,
    epochs=2,
    warmup_steps=3,
    lr=1e-3,
    augment=True,
    device="cpu",
    workers=2,
    log_every=1,
)
RESUME_MODEL = dict(TINY_MODEL, tab_dropout=0.1)  # dropout: the RNG state must be restored too


@pytest.fixture(scope="module")
def uninterrupted_stream(shards, remote, tmp_path_factory):
    from slimp_cli.train import pretrain

    out = tmp_path_factory.mktemp("stream-resume") / "full"
    torch.set_num_threads(1)
    return pretrain(
        remote, out, model=RESUME_MODEL, train=RESUME_TRAIN, shard_url=template("pipe", shards)
    )


# 376 training patients / B=32: 11 steps an epoch
@pytest.mark.parametrize("k", [5, 11])  # inside epoch 1 (the stream replayed) / its end
def test_a_streamed_resume_reaches_the_same_weights(
    shards, remote, uninterrupted_stream, tmp_path, k
):
    from slimp_cli.train import pretrain

    out, url = tmp_path / "run", template("path", shards)  # another template, the same data
    train = dict(RESUME_TRAIN, max_steps=k)
    pretrain(remote, out, model=RESUME_MODEL, train=train, shard_url=url)
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["step"] == k
    if k == 5:  # inside an epoch the stream depends on the number of workers
        with pytest.raises(SlimpError, match="give --workers 2"):
            pretrain(remote, out, train={"max_steps": 22, "workers": 1}, resume=True, shard_url=url)
    pretrain(remote, out, train={"max_steps": 22}, resume=True, shard_url=url)
    a = torch.load(uninterrupted_stream / "checkpoint-last.pt", weights_only=True)
    b = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert a["step"] == b["step"] == 22
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_torchrun_streams_each_rank_its_own_shards(shards, remote, tmp_path):
    """2 CPU processes x 2 DataLoader workers: the same 11 steps on each rank, one run dir."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "slimp_cli.cli", "pretrain", str(remote), "--out", str(out),
         "--shard-url", template("pipe", shards), "--image-model", "vit_test", "--input-size",
         "32", "--tab-dim", "32", "--embed-dim", "32", "-B", "16", "-N", "4", "--epochs", "1",
         "--workers", "2", "--device", "cpu", "--log-every", "1", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["environment"]["world_size"] == 2
    assert config["stream"]["steps_per_epoch"] == 376 // (2 * 16)
    assert config["stream"]["loader_workers"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 12))


def test_help_says_how_a_streamed_run_resumes(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside the option table
    res = run_cli("pretrain", "--help")
    text = " ".join(res.stdout.split())
    assert res.exit_code == 0 and "--shard-url" in text
    assert "exactly at an epoch boundary" in text and "same --workers" in text
