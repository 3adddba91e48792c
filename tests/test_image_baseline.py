"""The image-only SimCLR baseline's defaults (`slimp pretrain --variant image`): its own batch
and lr, the nested run's images seen, announced on stderr and in config.json."""

from __future__ import annotations

import json

import pytest

from slimp_cli.train import TrainConfig
from slimp_cli.train.budget import image_recipe
from slimp_cli.train.data import PatientInfo

TINY = ["--image-model", "vit_test", "--input-size", "32", "--device", "cpu", "--workers", "0"]


def _infos(counts):
    return [PatientInfo(n, ()) for n in counts]


def test_defaults_fill_batch_and_lr_and_given_options_win():
    infos = _infos([3] * 200 + [150] * 4)  # 4 patients above N = 100: capped at 100 each
    per_epoch = 3 * 200 + 100 * 4
    train = TrainConfig(patients_per_batch=4, lesions_per_patient=100, epochs=2)
    cfg, rec = image_recipe(train, set(), infos, None)
    assert cfg.images_per_batch == 250 == per_epoch // 4  # a quarter of an epoch: < 256
    assert cfg.lr == pytest.approx(1.5e-4 * 250 / 256)
    assert rec["images_per_epoch"] == per_epoch
    assert rec["run"] == {
        "steps_per_epoch": 4,
        "epochs": 2,
        "steps": 8,
        "images_seen": 2000,
        "images_per_step": "250 images",
        "lr": cfg.lr,
    }
    # the nested run at B = 4: 51 steps an epoch, the same <= N images of 204 patients
    assert rec["nested_equivalent"]["steps"] == 2 * (204 // 4)
    assert rec["nested_equivalent"]["images_seen"] == 2 * per_epoch
    big = _infos([5] * 2000)
    cfg, _ = image_recipe(train, set(), big, None)
    assert cfg.images_per_batch == 256  # SimCLR's batch once the data allows it
    assert cfg.lr == pytest.approx(1.5e-4)
    # a given batch keeps the lr rule; a given lr is kept; under 2 processes the rule uses the
    # global batch
    cfg, rec = image_recipe(train.replace(images_per_batch=64), {"images_per_batch"}, big, None)
    assert (cfg.images_per_batch, rec["images_per_batch_from"]) == (64, "given")
    assert cfg.lr == pytest.approx(1.5e-4 * 64 / 256)
    cfg, rec = image_recipe(train.replace(lr=3e-3), {"lr"}, big, None, world_size=2)
    assert (cfg.lr, rec["lr_from"]) == (3e-3, "given") and cfg.images_per_batch == 256
    cfg, _ = image_recipe(train, set(), big, None, world_size=2)
    assert cfg.lr == pytest.approx(1.5e-4 * 2)
    # a TrainConfig given whole keeps its batch: B x N when images_per_batch is None
    cfg, rec = image_recipe(train, set(TrainConfig.__dataclass_fields__), big, None)
    assert cfg == train and rec["images_per_batch"] == 400
    assert rec["images_per_batch_from"] == "given: B x N"


def test_cli_defaults_are_announced_in_config_json(pad_shards, tmp_path, run_slimp):
    out = tmp_path / "simclr"
    r = run_slimp(
        "pretrain", pad_shards, "--out", out, "--variant", "image", *TINY,
        "--epochs", "1", "--max-steps", "1", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    rec = cfg["image_baseline"]
    per_epoch = rec["images_per_epoch"]
    assert cfg["train"]["images_per_batch"] == rec["images_per_batch"] == min(256, per_epoch // 4)
    assert cfg["train"]["lr"] == pytest.approx(1.5e-4 * rec["images_per_batch"] / 256)
    assert rec["images_per_batch_from"].startswith("default") and rec["lr_from"].startswith(
        "default"
    )
    nested = rec["nested_equivalent"]
    assert nested["images_per_step"] == "4 patients x <= 100"  # the pretrain defaults
    assert nested["steps"] > 10 * rec["run"]["steps"]
    assert abs(nested["images_seen"] - rec["run"]["images_seen"]) < rec["images_per_batch"]
    notice = [line for line in r.stderr.splitlines() if "image-only SimCLR baseline" in line]
    assert len(notice) == 1 and f"{rec['images_per_batch']} images a step" in notice[0]
    # a SLIMP run has patient batches: the option is refused in one line
    r = run_slimp(
        "pretrain", pad_shards, "--out", tmp_path / "nested", *TINY, "--images-per-batch", "64",
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: --images-per-batch is an option of --variant image (the SimCLR baseline); "
        "SLIMP's batches are --patients-per-batch patients"
    ]
