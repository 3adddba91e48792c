"""Ctrl-C during training: the step finishes, a checkpoint is saved, --resume continues."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import torch

ARGS = [
    "--image-model",
    "vit_test",
    "--input-size",
    "32",
    "--tab-dim",
    "16",
    "--embed-dim",
    "16",
    "-B",
    "8",
    "-N",
    "2",
    "--epochs",
    "400",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--log-every",
    "1",
    "--no-progress",
]


def _slimp(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "slimp_cli.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_sigint_saves_a_checkpoint_and_resume_continues(pad_shards, tmp_path):
    run = tmp_path / "run"
    proc = _slimp("pretrain", pad_shards, "--out", run, *ARGS)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 3
    ):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "Traceback" not in err
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)
    stopped = int(state["step"])
    assert stopped >= 3
    assert stopped == json.loads(metrics.read_text().splitlines()[-1])["step"]
    proc = _slimp(
        "pretrain", pad_shards, "--out", run, "--resume", "--max-steps", stopped + 2, *ARGS
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert int(torch.load(run / "checkpoint-last.pt", weights_only=True)["step"]) == stopped + 2
