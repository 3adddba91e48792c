"""Run records and logs: config.json's environment block, resume with another world size,
plain log lines when stderr is not a terminal, --report-to tensorboard, pretrain --config."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.models.runs import read_config, read_metrics
from slimp_cli.train import pretrain
from slimp_cli.train.records import check_world_size, git_commit, recipe_from_config

TINY = [
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
    "1",
    "--device",
    "cpu",
    "--workers",
    "0",
]


@pytest.fixture(scope="module")
def logged_run(synth_shards, tmp_path_factory):
    """A 4-step run through the installed executable (stderr is a pipe, not a terminal)."""
    from conftest import _run_slimp

    out = tmp_path_factory.mktemp("records") / "run"
    args = ["pretrain", synth_shards, "--out", out, *TINY, "--max-steps", "4", "--log-every", "2"]
    res = _run_slimp(*args, "--report-to", "tensorboard")
    assert res.returncode == 0, res.stderr
    return out, res


def test_plain_log_lines_every_log_every_steps_when_stderr_is_not_a_terminal(logged_run):
    _, res = logged_run
    lines = [line for line in res.stderr.splitlines() if line.startswith("pretrain step ")]
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"], res.stderr
    assert all("loss " in line and "lr " in line and "img/s" in line for line in lines)
    assert "━" not in res.stderr  # no progress bar drawn into the log


def test_config_records_versions_git_argv_device_and_world_size(logged_run):
    import timm

    out, _ = logged_run
    env = read_config(out)["environment"]
    assert env["torch"] == torch.__version__ and env["timm"] == timm.__version__
    assert env["cuda"] == torch.version.cuda  # None on a CPU build
    assert env["device"] == "cpu" and env["world_size"] == 1
    assert "pretrain" in env["argv"] and str(out) in env["argv"]
    assert env["argv"][env["argv"].index("--max-steps") + 1] == "4"
    expected = git_commit()
    assert env["git_commit"] == expected
    if expected is not None:
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", expected)


def test_git_commit_is_none_outside_a_checkout(tmp_path):
    assert git_commit(tmp_path) is None


def test_tensorboard_mirrors_metrics_jsonl(logged_run):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is absent")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = logged_run
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    rows = read_metrics(out)
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in rows] == [2, 4]
    for event, row in zip(acc.Scalars("train/loss"), rows):
        assert event.value == pytest.approx(row["loss"], rel=1e-6)
    assert "train/lr" in acc.Tags()["scalars"] and "train/epoch" not in acc.Tags()["scalars"]


def test_report_to_tensorboard_without_the_package_is_one_line(synth_shards, tmp_path, run_cli):
    """A clear error, before training, when the optional package cannot be imported."""
    import sys

    blocked = {"torch.utils.tensorboard": None, "tensorboard": None}
    saved = {k: sys.modules.get(k) for k in blocked}
    sys.modules.update(blocked)  # a None entry makes `import` raise ImportError
    try:
        res = run_cli(
            "pretrain", synth_shards, "--out", tmp_path / "r", *TINY, "--report-to", "tensorboard"
        )
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    assert res.exit_code == 1
    assert res.stderr.startswith("error: --report-to tensorboard needs the tensorboard package")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_resume_with_another_world_size_is_refused(synth_shards, tmp_path, tiny_train):
    from conftest import TINY_MODEL

    out = tmp_path / "run"
    pretrain(synth_shards, out, model=TINY_MODEL, train=tiny_train(2))
    # The checkpoint's config says 2 processes (as a torchrun run's would); resume with one.
    ckpt = out / "checkpoint-last.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["environment"]["world_size"] == 1
    state["config"]["environment"]["world_size"] = 2
    torch.save(state, ckpt)
    with pytest.raises(SlimpError, match=r"--resume with 1 process but .* with 2 processes"):
        pretrain(synth_shards, out, model=TINY_MODEL, train=tiny_train(4), resume=True)


def test_check_world_size_allows_old_runs_and_equal_sizes(tmp_path):
    check_world_size({}, 2, tmp_path)  # saved before the world size was recorded
    check_world_size({"environment": {"world_size": 2}}, 2, tmp_path)
    with pytest.raises(SlimpError, match="4 processes"):
        check_world_size({"environment": {"world_size": 4}}, 1, tmp_path)


def test_pretrain_config_reads_a_saved_run_with_overrides(logged_run, synth_shards, tmp_path):
    from conftest import _run_cli

    old, _ = logged_run
    out = tmp_path / "again"
    # the deprecated --img-size still works (a notice), overriding the saved 32 px is refused
    res = _run_cli(
        "pretrain", synth_shards, "--out", out, "--config", old / "config.json", "--lr", "0.002"
    )
    assert res.exit_code == 0, res.stderr
    a, b = read_config(old), read_config(out)
    assert b["model"] == a["model"]
    assert b["train"] == {**a["train"], "lr": 0.002}
    assert b["train"]["max_steps"] == 4 and b["train"]["log_every"] == 2
    assert b["environment"]["argv"] != a["environment"]["argv"]


def test_config_with_resume_and_bad_config_files_are_one_line(logged_run, tmp_path):
    from conftest import _run_cli

    old, _ = logged_run
    res = _run_cli("pretrain", "DATA", "--out", old, "--config", old, "--resume")
    assert res.exit_code == 1 and "--config with --resume" in res.stderr
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(SlimpError, match="not a slimp run config"):
        recipe_from_config(bad)
    model, train = recipe_from_config(old)  # a run dir: its config.json
    assert model["img_size"] == 32 and train["max_steps"] == 4


def test_deprecated_img_size_still_works(synth_shards, tmp_path):
    from conftest import _run_cli

    args = [a if a != "--input-size" else "--img-size" for a in TINY]
    res = _run_cli("pretrain", synth_shards, "--out", tmp_path / "r", *args, "--max-steps", "1")
    assert res.exit_code == 0, res.stderr
    assert "--img-size is deprecated; use --input-size" in res.stderr
    assert read_config(tmp_path / "r")["model"]["img_size"] == 32
    res = _run_cli(
        "pretrain", synth_shards, "--out", tmp_path / "x", "--img-size", "32", "--input-size", "64"
    )
    assert res.exit_code == 2 and "contradicts --input-size" in res.output


def test_git_commit_survives_a_missing_git(monkeypatch):
    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert git_commit() is None
