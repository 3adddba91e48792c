"""`--image-ssl-weight`: SLIP's image self-supervision term beside the nested loss (train/ssl.py).

W = 0 is the paper's loss with no extra view; W > 0 adds W x NT-Xent between two SimCLR views
of every image (checked against a hand-written loop), logged as `loss_ssl` / `val_loss_ssl`,
resumed exactly, gathered over ranks like the other losses.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.shards import ShardIndex
from slimp_cli.data.transforms import Preprocess
from slimp_cli.losses import nested_loss
from slimp_cli.models import build_model
from slimp_cli.models.config import ModelConfig
from slimp_cli.models.runs import read_config, read_metrics
from slimp_cli.train import adapt, loop, pretrain
from slimp_cli.train import batches as train_batches
from slimp_cli.train import data as train_data
from slimp_cli.train.distributed import DistInfo
from slimp_cli.train.ssl import HEAD_STATE, build_ssl_net
from slimp_cli.train.train_config import TrainConfig

TINY = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)
FAST = dict(workers=0, device="cpu", log_every=1, lr=1e-3, patients_per_batch=8)


def cos(u, v):
    return float((u @ v) / (u.norm() * v.norm()))


def ref_nt_xent(v1, v2, groups, tau):
    """NT-Xent written out: each of the 2L views finds its other view among the others,
    the views of other images of its own lesion (same group) left out."""
    z = torch.cat([v1, v2]).double()
    g = list(groups) * 2
    n2 = z.shape[0]
    total = 0.0
    for k in range(n2):
        pos = (k + n2 // 2) % n2
        keep = [m for m in range(n2) if m != k and (m == pos or g[m] != g[k])]
        den = sum(math.exp(cos(z[k], z[m]) / tau) for m in keep)
        total += -(cos(z[k], z[pos]) / tau - math.log(den))
    return total / n2


def test_weight_zero_draws_no_extra_view_and_keeps_the_loss(
    synth_shards, tmp_path, monkeypatch, one_torch_thread
):
    views, items = Counter(), []
    augment_view, getitem = Preprocess.augment_view, train_data.PatientDataset.__getitem__

    def counting(self, img, rng, recipe="light"):
        views[recipe] += 1
        return augment_view(self, img, rng, recipe)

    def recording(self, item):
        items.append(item)
        return getitem(self, item)

    monkeypatch.setattr(Preprocess, "augment_view", counting)
    monkeypatch.setattr(train_data.PatientDataset, "__getitem__", recording)
    train = dict(FAST, lesions_per_patient=4, augment=True, max_steps=1)
    zero = pretrain(synth_shards, tmp_path / "zero", model=TINY, train=train)
    n = sum(len(it.lesions) for it in items)  # the images of step 1
    assert views == {"light": n}  # the SLIMP view alone
    row = read_metrics(zero)[0]
    assert set(row) == {"step", "epoch", "loss", "loss_lesions", "loss_patient", "lr"} | {
        "images_per_s"
    }
    assert read_config(zero)["train"]["image_ssl_weight"] == 0.0

    views.clear()
    items.clear()
    ssl = pretrain(
        synth_shards, tmp_path / "ssl", model=TINY, train=dict(train, image_ssl_weight=0.5)
    )
    assert sum(len(it.lesions) for it in items) == n
    assert views == {"light": n, "simclr": 2 * n}  # + two SimCLR views of every image
    ssl_row = read_metrics(ssl)[0]
    # same initial model and the same SLIMP view: the nested part is today's loss, exactly
    for key in ("loss_lesions", "loss_patient"):
        assert ssl_row[key] == row[key], key
    assert ssl_row["loss_main"] == row["loss"]
    assert ssl_row["loss"] == pytest.approx(row["loss"] + 0.5 * ssl_row["loss_ssl"], rel=1e-6)
    assert ssl_row["loss_ssl"] > 0.5  # an untrained encoder does not yet tell its views apart
    assert read_config(ssl)["train"]["image_ssl_weight"] == 0.5


def test_positive_weight_is_nested_plus_w_times_nt_xent_on_the_two_views(pad_shards):
    index = ShardIndex.open(pad_shards)
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="nested", **TINY), index.schema)
    ds = train_data.PatientDataset(
        index, inputs=model.inputs, preprocess=model.preprocess, ssl_views=True
    )
    # PAD patients with several images of one lesion: twins within a patient
    twins = [
        i
        for i in range(len(index))
        if len({les["lesion_id"] for les in index.patient(i).lesions})
        < len(index.patient(i).lesions)
    ]
    chosen = twins[:2] + [i for i in range(len(index)) if i not in twins][:4]
    items = [
        train_data.PatientItem(p, tuple(range(min(3, len(index.patient(p).lesions)))), (0, 0, 0, q))
        for q, p in enumerate(chosen)
    ]
    raw = train_data.collate([ds[it] for it in items])
    # two different SimCLR views of every image, neither of them the SLIMP view
    one, two = raw["ssl_images1"], raw["ssl_images2"]
    assert one.shape == two.shape == raw["images"].shape and one.dtype == torch.uint8
    for a, b in ((one, two), (one, raw["images"]), (two, raw["images"])):
        assert all(not torch.equal(a[i], b[i]) for i in range(len(a)))
    batch = train_batches.batch_to(raw, torch.device("cpu"), model.preprocess)
    net = build_ssl_net(model, seed=0)
    outputs = net(batch)
    train = TrainConfig(image_ssl_weight=0.7, temperature=0.2, lam=0.8)
    got = loop._compute_loss("nested", outputs, train, DistInfo())
    nested = nested_loss(
        *(outputs[k] for k in ("image", "lesion", "mask", "phenotype", "patient")),
        temperature=0.2,
        lam=0.8,
        groups=outputs["groups"],
    )
    # the views the head saw: the SSL images, through the image encoder and the SSL head
    with torch.no_grad():
        z1 = net.head(model.image_encoder(batch["ssl_images1"]))
        z2 = net.head(model.image_encoder(batch["ssl_images2"]))
    assert torch.allclose(outputs["ssl_view1"], z1, atol=1e-5)
    assert torch.allclose(outputs["ssl_view2"], z2, atol=1e-5)
    groups = batch["lesion_group"].tolist()
    assert len(set(groups)) < len(groups)  # twins present, left out of each other's negatives
    ssl = ref_nt_xent(z1, z2, groups, 0.2)
    assert float(got["loss_ssl"].detach()) == pytest.approx(ssl, rel=1e-5)
    assert float(got["loss_main"].detach()) == pytest.approx(
        float(nested["loss"].detach()), rel=1e-6
    )
    assert float(got["loss"].detach()) == pytest.approx(
        float(nested["loss"].detach()) + 0.7 * ssl, rel=1e-5
    )
    got["loss"].backward()  # the term trains the SSL head and the image encoder
    assert net.head.mlp[0].weight.grad.abs().sum() > 0


RESUME = dict(FAST, lesions_per_patient=4, epochs=2, augment=True, image_ssl_weight=0.5)


def test_ssl_run_logs_the_term_resumes_exactly_and_adapts(synth_shards, tmp_path, one_torch_thread):
    # 54 training patients / B 8 = 6 steps an epoch; 9 steps cross the epoch-1 validation
    full = pretrain(synth_shards, tmp_path / "full", model=TINY, train=dict(RESUME, max_steps=9))
    part = pretrain(synth_shards, tmp_path / "part", model=TINY, train=dict(RESUME, max_steps=4))
    pretrain(synth_shards, part, train={"max_steps": 9}, resume=True)
    a = torch.load(full / "checkpoint-last.pt", weights_only=True)
    b = torch.load(part / "checkpoint-last.pt", weights_only=True)
    assert a["step"] == b["step"] == 9
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    head = a["extra"][HEAD_STATE]
    assert set(head) == {f"mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    for key, value in head.items():
        assert torch.equal(value, b["extra"][HEAD_STATE][key]), key
    assert not any(k.startswith("head.") for k in a["model"])  # the model's own weights only
    # the optimiser carries the head's moments too, resumed as they were
    assert len(a["optimizer"]["state"]) == len(b["optimizer"]["state"]) > len(a["model"]) // 2
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    rows, val_rows = read_metrics(full), read_metrics(full, kind="validation")
    assert [r["step"] for r in rows] == list(range(1, 10))
    for r in rows:
        assert r["loss"] == pytest.approx(r["loss_main"] + 0.5 * r["loss_ssl"], rel=1e-6)
    assert [r["epoch"] for r in val_rows] == [1]
    v = val_rows[0]
    assert v["val_loss_ssl"] > 0
    assert v["val_loss"] == pytest.approx(v["val_loss_main"] + 0.5 * v["val_loss_ssl"], rel=1e-6)
    resumed = read_metrics(part)
    for r, want in zip(resumed[4:], rows[4:], strict=True):  # the rows after the resume
        assert {k: x for k, x in r.items() if k != "images_per_s"} == {
            k: x for k, x in want.items() if k != "images_per_s"
        }
    # a resume must keep W: another value would change the trajectory
    with pytest.raises(SlimpError, match=r"image_ssl_weight: 0.5 -> 0.1"):
        pretrain(synth_shards, part, train={"image_ssl_weight": 0.1}, resume=True)
    # adapt: a new head, the term on the target
    adapted = adapt(
        full,
        synth_shards,
        tmp_path / "adapted",
        train=dict(FAST, lesions_per_patient=4, max_steps=2, image_ssl_weight=0.25),
    )
    assert read_config(adapted)["train"]["image_ssl_weight"] == 0.25
    rows = read_metrics(adapted)
    assert len(rows) == 2 and all(r["loss_ssl"] > 0 for r in rows)


def test_cli_option(synth_shards, tmp_path, run_slimp):
    cli = [
        "--image-model", "vit_test", "--input-size", "32", "--tab-dim", "32", "-B", "8",
        "-N", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--max-steps", "2",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    proc = run_slimp(
        "pretrain", synth_shards, "--out", out, *cli, "--image-ssl-weight", "0.5", env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_config(out)["train"]["image_ssl_weight"] == 0.5
    assert all("loss_ssl" in r for r in read_metrics(out))
    bad = run_slimp(
        "pretrain", synth_shards, "--out", tmp_path / "bad", *cli, "--image-ssl-weight", "-1"
    )
    assert bad.returncode == 2 and "--image-ssl-weight" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_train_config_checks_the_weight():
    assert TrainConfig().image_ssl_weight == 0.0
    assert (
        TrainConfig.from_dict(TrainConfig(image_ssl_weight=0.3).to_dict()).image_ssl_weight == 0.3
    )
    for bad, message in ((-0.5, ">= 0"), (float("nan"), "finite"), ("1", "finite")):
        with pytest.raises(SlimpError, match=message):
            TrainConfig(image_ssl_weight=bad)
    with pytest.raises(SlimpError, match="SM3 has its own"):
        TrainConfig(method="sm3", image_ssl_weight=1.0)


def test_the_image_variant_refuses_the_term_before_writing(synth_shards, tmp_path):
    out = tmp_path / "image"
    with pytest.raises(SlimpError) as err:
        pretrain(
            synth_shards,
            out,
            model=dict(TINY, variant="image"),
            train=dict(FAST, lesions_per_patient=2, max_steps=1, image_ssl_weight=1.0),
        )
    assert str(err.value) == (
        "--image-ssl-weight adds image self-supervision to the nested and flat losses; "
        "the image variant is SimCLR already"
    )
    assert not (out / "config.json").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_processes_gather_the_ssl_views_like_one(synth_shards, tmp_path):
    script = str(Path(__file__).with_name("ddp_ssl_check.py"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    runs = (
        [sys.executable, script, str(synth_shards), str(one)],
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            script, str(synth_shards), str(two),
        ],
    )  # fmt: skip
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["loss_ssl"] > 0.5
    for key in ("loss", "loss_main", "loss_ssl", "loss_lesions", "loss_patient"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    ga = torch.load(str(one) + ".grad.pt", weights_only=True)
    gb = torch.load(str(two) + ".grad.pt", weights_only=True)
    assert ga.shape == gb.shape and torch.allclose(ga, gb, rtol=1e-4, atol=1e-6)
