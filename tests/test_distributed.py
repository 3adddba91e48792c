"""Several processes: torchrun (gloo, CPU) matches one process; a 2-process pretrain completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimp_cli.models.runs import load_run, read_config, read_metrics, read_summary

DDP_CHECK = str(Path(__file__).with_name("ddp_check.py"))

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed not available"
)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(nproc: int, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_process_loss_and_gradient_match_one_process(synth_shards, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    args = ["--patients", "8", "--lesions", "4"]
    proc = subprocess.run(
        [sys.executable, DDP_CHECK, str(synth_shards), str(one), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _torchrun(2, DDP_CHECK, str(synth_shards), str(two), *args)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["loss_lesions"] > 0.1  # the fixed batch has multi-lesion patients
    for key in ("loss", "loss_lesions", "loss_patient"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    ga = torch.load(str(one) + ".grad.pt", weights_only=True)
    gb = torch.load(str(two) + ".grad.pt", weights_only=True)
    assert ga.shape == gb.shape
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6)


def test_torchrun_pretrain_completes(synth_shards, tmp_path):
    out = tmp_path / "run"
    _torchrun(
        2,
        "-m",
        "slimp_cli.cli",
        "pretrain",
        str(synth_shards),
        "--out",
        str(out),
        "--image-model",
        "vit_test",
        "--input-size",
        "32",
        "--tab-dim",
        "32",
        "--patients-per-batch",
        "4",
        "--lesions-per-patient",
        "4",
        "--epochs",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--no-progress",
        "--lr",
        "1e-3",
    )
    metrics = read_metrics(out)
    # 54 training patients (6 of 60 held out) / (4 patients x 2 ranks) = 6 steps per epoch
    assert [m["step"] for m in metrics] == list(range(1, 13))
    # rank 0 writes one held-out validation row per epoch
    assert [m["epoch"] for m in read_metrics(out, kind="validation")] == [1, 2]
    cfg = read_config(out)
    assert cfg["variant"] == "nested"
    assert cfg["environment"]["world_size"] == 2
    _run = load_run(out)
    model, _, _ = _run.model, _run.config, _run.schema
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint-best.pt",
        "checkpoint-last.pt",
        "config.json",
        "holdout.json",
        "metrics.jsonl",
        "summary.csv",
    ]
    # summary.csv: rank 0's row per epoch, the train loss averaged over both ranks' steps
    rows = read_summary(out)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 6), (2, 12)]
    for r in rows:
        losses = [m["loss"] for m in metrics if m["epoch"] == r["epoch"] - 1]
        assert r["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-9)
