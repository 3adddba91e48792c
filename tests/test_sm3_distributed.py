"""SM3 under torchrun (2 processes, gloo, CPU) trains as one process on the doubled batch.

The sampler gives rank r rows [r*B, (r+1)*B) of each global batch of 2B cases, with the same
augmentation seeds as one process drawing 2B; the loss is the global batch's (every rank's
projections gathered), batch norm runs over the global batch (`GlobalBatchNorm`), so after a
few AdamW steps the 2-process weights, BN statistics and losses equal the 1-process ones to
float rounding. Stage 2 (the label modules; its relation layer's dropout draws differ between
the layouts, so its weights are not compared) fills its memory bank from every rank: the
epoch's pseudo-labels equal one process's and each step updates the bank rows of every
rank's cases.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from slimp_cli.models.runs import read_config, read_metrics
from slimp_cli.train import pretrain

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="torch.distributed not available"
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]

TINY = dict(image_model="resnet_test", img_size=32, proj_dim=16, label_dim=32)
TRAIN = dict(
    method="sm3",
    holdout=0.0,
    epochs=2,
    lr=1e-3,
    warmup_steps=1,
    workers=0,
    device="cpu",
    log_every=1,
)
CLI = ["--image-model", "resnet_test", "--input-size", "32", "--workers", "0"]
CLI += ["--device", "cpu", "--log-every", "1", "--no-progress", "--holdout", "0"]
CLI += ["--epochs", "2", "--lr", "1e-3", "--warmup-steps", "1"]


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "slimp_cli.cli", "pretrain", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _last(run):
    return torch.load(run / "checkpoint-last.pt", weights_only=True)


def test_two_processes_train_stage1_as_one_process_on_the_doubled_batch(paired_shards, tmp_path):
    one = pretrain(
        paired_shards,
        tmp_path / "one",
        model=dict(TINY),
        train=dict(TRAIN, patients_per_batch=16, max_steps=3),
    )
    two = tmp_path / "two"
    proc = _torchrun(
        paired_shards, "--out", two, "--method", "sm3", "--proj-dim", "16", "--label-dim", "32",
        *CLI, "-B", "8", "--max-steps", "3",
    )  # fmt: skip
    assert proc.stderr.count("recipe 'scratch'") == 1  # announced once, by rank 0
    assert read_config(two)["environment"]["world_size"] == 2
    m1, m2 = read_metrics(one), read_metrics(two)
    assert [m["step"] for m in m2] == [1, 2, 3]
    for a, b in zip(m1, m2):
        for key in ("loss", "loss_derm", "loss_clinic", "loss_mm", "paired", "unpaired"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert m1[0]["paired"] == 16 - m1[0]["unpaired"]  # the global batch's counts, not a rank's
    a, b = _last(one)["model"], _last(two)["model"]
    assert a.keys() == b.keys()
    moved = 0
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], rtol=1e-3, atol=2e-5), key
        else:
            assert torch.equal(a[key], b[key]), key
        moved += "running_var" in key and not torch.allclose(a[key], torch.ones_like(a[key]))
    assert moved > 0  # the BN statistics were trained (and compared)


def test_two_processes_share_the_stage2_memory_bank(paired_shards, tmp_path):
    init = pretrain(
        paired_shards,
        tmp_path / "init",
        model=dict(TINY),
        train=dict(TRAIN, patients_per_batch=16, max_steps=2),
    )
    stage2 = dict(TRAIN, stage="multilabel", init=str(init), max_steps=1)
    one = pretrain(paired_shards, tmp_path / "one", train=dict(stage2, patients_per_batch=16))
    two = tmp_path / "two"
    _torchrun(
        paired_shards, "--out", two, "--method", "sm3", "--stage", "multilabel", "--init", init,
        *CLI, "-B", "8", "--max-steps", "1",
    )  # fmt: skip
    a, b = _last(one)["extra"], _last(two)["extra"]
    assert a["labels_epoch"] == b["labels_epoch"] == 0
    assert torch.equal(a["labels"], b["labels"])  # epoch 0's k-means on the same first bank
    first = _first_bank(init, paired_shards)  # the eval pass before any step
    touched = [(bank - first).abs().amax(dim=(1, 2)) > 1e-4 for bank in (a["bank"], b["bank"])]
    # one step of 16 cases (8 per rank): both ranks' rows reached the bank, as in one process
    assert int(touched[0].sum()) == 16 and torch.equal(touched[0], touched[1])
    assert read_metrics(two)[0]["step"] == 1


def _first_bank(init, shards):
    from slimp_cli.data.shards import ShardIndex, case_index
    from slimp_cli.models.runs import load_run
    from slimp_cli.train.data import CaseDataset
    from slimp_cli.train.sm3 import MODALITIES, PseudoLabels

    model = load_run(init).model
    model.set_stage("multilabel")
    index = ShardIndex.open(shards)
    data = CaseDataset(
        index, case_index(index, MODALITIES), preprocess=model.preprocess, views=1, augment=False
    )
    return PseudoLabels(model, data, seed=0, device=torch.device("cpu")).embed_all()
