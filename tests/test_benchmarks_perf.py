"""benchmarks/gpu.py and benchmarks/pretrain.py: the scripts run (tiny sizes, CPU) and say what
they measure, so they cannot rot before a GPU runs them; the ceilings' own arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def run_script(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


def test_gpu_script_cpu_smoke_prints_every_figure():
    res = run_script(REPO / "benchmarks" / "gpu.py", "--cpu-smoke")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert not [r for r in rows if "error" in r], rows
    figures = {r["figure"]: r for r in rows}
    for name in (
        "environment",
        "bare_train",
        "bare_inference",
        "pretrain_images_per_s",
        "embed_images_per_s",
        "adamw_step_s",
        "ilp_search",
        "peak_memory",
    ):
        assert name in figures, (name, rows)
    e2e = figures["pretrain_images_per_s"]
    assert e2e["value"] > 0 and set(e2e["ratios"]) == {"bare_encoder", "whole_model"}
    for k, ceiling in e2e["ceilings"].items():
        assert e2e["ratios"][k] == pytest.approx(e2e["value"] / ceiling, rel=0.02, abs=2e-3)
    assert 0 < e2e["optimizer_share"] < 1
    assert figures["ilp_search"]["queries"] == 200 and figures["ilp_search"]["value"] > 0
    # the device-decode run is named as skipped, not silently left out
    assert {"figure": "end_to_end", "decode": "gpu", "skipped": "needs CUDA (nvJPEG)"} in rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_script_without_cuda_is_one_line():
    res = run_script(REPO / "benchmarks" / "gpu.py", timeout=120)
    assert res.returncode == 1
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "CUDA" in lines[0]


def test_time_steps_reports_images_per_second_of_each_step(monkeypatch):
    """A step of known duration gives the known rate (the clock is faked)."""
    sys.path.insert(0, str(REPO))
    from benchmarks import ceilings

    clock = iter([0.0, 0.5, 1.0, 3.0])  # two timed steps: 0.5 s and 2 s
    monkeypatch.setattr(ceilings.time, "perf_counter", lambda: next(clock))
    calls = []
    rates = ceilings.time_steps(lambda i: calls.append(i) or 10, 2, torch.device("cpu"))
    assert calls == [0, 1, 2]  # one warm-up, then the timed steps
    assert rates == [20.0, 5.0]
