"""A run dir has one writer: the advisory lock of `runs.run_dir_lock` (issue 13, part 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import slimp_executable

from slimp_cli.core.errors import SlimpError
from slimp_cli.models.runs import LOCK, read_metrics, run_dir_lock

TINY = [
    "--image-model", "vit_test", "--input-size", "32", "--tab-dim", "32", "--embed-dim", "32",
    "--patients-per-batch", "8", "--lesions-per-patient", "4", "--epochs", "1",
    "--device", "cpu", "--workers", "0", "--no-progress",
]  # fmt: skip


def _pretrain(data, out, steps: int) -> list[str]:
    return [slimp_executable(), "pretrain", str(data), "--out", str(out), *TINY,
            "--max-steps", str(steps)]  # fmt: skip


def _lock_in_another_process(run) -> str:
    """Whether another process can take the run dir's lock file: "free" or the holder's pid
    (paths.acquire_lock, what run_dir_lock takes; without importing torch)."""
    code = (
        "import fcntl, sys\n"
        "from pathlib import Path\n"
        "from slimp_cli.core.paths import acquire_lock, release_lock\n"
        "lock = Path(sys.argv[1]) / '.slimp-run.lock'\n"
        "try:\n"
        "    release_lock(lock, acquire_lock(lock, fcntl, busy=RuntimeError))\n"
        "    print('free')\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    run = tmp_path / "run"
    with run_dir_lock(run):
        assert (run / LOCK).read_text().strip() == str(os.getpid())
        assert _lock_in_another_process(run) == str(os.getpid())
        with run_dir_lock(run):  # re-entrant in the holding process
            assert (run / LOCK).is_file()
        assert (run / LOCK).is_file()  # the inner block did not release it
    assert list(run.iterdir()) == []  # released and removed on exit
    assert _lock_in_another_process(run) == "free"
    with run_dir_lock(run):  # free again
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(SlimpError, match="exists and is not a folder"):
        with run_dir_lock(tmp_path / "file"):
            pass


def test_a_stale_lock_file_does_not_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text("999999\n")  # left by a process killed with -9: nobody holds it
    with run_dir_lock(run):
        assert (run / LOCK).read_text().strip() == str(os.getpid())


def test_pretrain_into_a_locked_run_dir_is_one_line_naming_the_pid(synth_shards, tmp_path):
    run = tmp_path / "run"
    with run_dir_lock(run):
        res = subprocess.run(_pretrain(synth_shards, run, 1), capture_output=True, text=True)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: --out ") and f"(pid {os.getpid()})" in lines[0]
    assert "Traceback" not in res.stderr
    assert list(run.iterdir()) == []  # the refused run wrote nothing


def test_two_concurrent_pretrains_exactly_one_runs(synth_shards, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            _pretrain(synth_shards, run, 6),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 1], [err for _, _, err in results]
    loser = next(err for p, _, err in results if p.returncode == 1)
    lines = loser.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in loser
    # refused by the lock (or, if it started after the winner finished, by the finished run)
    assert "in use by another slimp process (pid " in lines[0] or "already holds a run" in lines[0]
    # one run's files only: its 6 steps logged once, no lock left behind
    steps = [m["step"] for m in read_metrics(run) if "loss" in m]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-best.pt",
        "checkpoint-last.pt",
        "config.json",
        "holdout.json",
        "metrics.jsonl",
        "summary.csv",
    ]
