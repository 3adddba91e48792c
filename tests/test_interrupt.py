"""Ctrl-C: during training the step finishes, a checkpoint is saved and --resume continues
(with the metrics rows of an uninterrupted run); at any other moment (start-up, embed) exit 130
with one line, never swallowed, nothing written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import slimp_executable

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


def _interrupted(proc, err: str) -> None:
    """Exit 130 and the one line `interrupted`: no traceback, no "Exception ignored"."""
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert err.strip() == "interrupted", err[-2000:]


@pytest.mark.parametrize("delay", [1.0, 2.5, 4.0])
def test_sigint_during_start_up_is_130_and_one_line(pad_run, pad_shards, tmp_path, delay):
    """Before the command runs (typer, the command modules, torch, the run being loaded): the
    window the issue found a traceback in. (A SIGINT in the first ~0.1 s lands in Python's own
    start-up, before any slimp code exists: not ours to handle.)"""
    proc = subprocess.Popen(
        # one image a batch, no workers: the embed outlasts the longest delay on a fast machine
        [
            slimp_executable(),
            "embed",
            pad_run,
            pad_shards,
            "--out",
            tmp_path / "f.h5",
            "--batch-size",
            "1",
            "--workers",
            "0",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    assert proc.poll() is None, f"embed finished within {delay} s: nothing was interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    _interrupted(proc, err)
    assert list(tmp_path.iterdir()) == []


def test_sigint_during_embed_is_never_swallowed(pad_run, pad_shards, tmp_path):
    """The issue: 2 of 12 Ctrl-C in embed were swallowed by a finaliser and the store was
    written anyway. Interrupted at several points of the writing: always 130, never a store."""
    out = tmp_path / "f.h5"
    for wait, workers in ((0.0, 0), (0.3, 2), (0.8, 0)):  # 2: DataLoader workers get it too
        proc = subprocess.Popen(
            [
                slimp_executable(),
                "embed",
                pad_run,
                pad_shards,
                "--out",
                out,
                "--batch-size",
                "1",  # many small writes: the embed outlasts the longest wait
                "--workers",
                str(workers),
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(".f.h5.tmp-*")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(wait)
        assert proc.poll() is None, f"embed finished before the interrupt ({wait} s)"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        _interrupted(proc, err)
        assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_metrics_rows_after_a_resume_equal_the_uninterrupted_runs(synth_shards, tmp_path):
    """The issue's step 40 (0.3979 vs 0.3612): a run stopped inside a --log-every interval
    logged the resumed part of that interval alone. Here: log every 4 steps, 6 steps an epoch;
    stopped at step 5, resumed to 10, against 10 steps at once."""
    from conftest import TINY_MODEL

    from slimp_cli.models.runs import read_metrics
    from slimp_cli.train import pretrain

    torch.set_num_threads(1)
    train = dict(
        patients_per_batch=8, lesions_per_patient=2, epochs=2, lr=1e-3, device="cpu",
        workers=0, seed=0, log_every=4,
    )  # fmt: skip
    whole = pretrain(
        synth_shards, tmp_path / "whole", model=TINY_MODEL, train={**train, "max_steps": 10}
    )
    parts = tmp_path / "parts"
    pretrain(synth_shards, parts, model=TINY_MODEL, train={**train, "max_steps": 5})
    pretrain(synth_shards, parts, model=TINY_MODEL, train={**train, "max_steps": 10}, resume=True)

    def losses(run):
        rows = read_metrics(run)
        return {r["step"]: {k: v for k, v in r.items() if k.startswith("loss")} for r in rows}

    a, b = losses(whole), losses(parts)
    assert sorted(a) == [4, 6, 8, 10]  # every 4 steps, the epoch's end (6), the last step
    assert sorted(b) == [4, 5, 6, 8, 10]  # + the row where the first part stopped
    for step in a:
        assert b[step] == a[step], (step, a[step], b[step])
