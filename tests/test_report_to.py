"""`--report-to tensorboard,wandb`: the comma list, the W&B mirror (wired through a fake `wandb`
module, and for real in offline mode when the package is installed), the one-line error when
the optional package is missing."""

from __future__ import annotations

import os
import sys
import types

import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.models.runs import read_metrics
from slimp_cli.train import report
from slimp_cli.train.report import WANDB_DIR, WANDB_ID_FILE, open_mirror, parse_report_to
from slimp_cli.train.train_config import TrainConfig

TINY = [
    *("--image-model", "vit_test", "--input-size", "32", "--tab-dim", "16", "--embed-dim", "16"),
    *("-B", "8", "-N", "2", "--epochs", "2", "--device", "cpu", "--workers", "0"),
    *("--log-every", "2"),
]


def test_parse_report_to():
    assert parse_report_to("none") == ()
    assert parse_report_to("tensorboard") == ("tensorboard",)
    assert parse_report_to("wandb, tensorboard,wandb") == ("wandb", "tensorboard")
    for bad in ("", "wandb,mlflow", "none,wandb", "tensorboard,"):
        with pytest.raises(SlimpError, match="--report-to"):
            parse_report_to(bad)
    assert TrainConfig(report_to="tensorboard,wandb").report_to == "tensorboard,wandb"
    with pytest.raises(SlimpError, match="mlflow"):
        TrainConfig(report_to="mlflow")


class FakeWandb(types.ModuleType):
    """What slimp uses of `wandb`: init(...) -> run with define_metric, log, finish; Settings."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.runs: list[types.SimpleNamespace] = []

    def Settings(self, **kw):  # noqa: N802 (wandb's name)
        return kw

    def init(self, **kw):
        self.inits.append(kw)
        run = types.SimpleNamespace(metrics={}, logged=[], finished=False)
        run.define_metric = lambda name, step_metric=None: run.metrics.update({name: step_metric})
        run.log = lambda data: run.logged.append(dict(data))
        run.finish = lambda: setattr(run, "finished", True)
        self.runs.append(run)
        return run


@pytest.fixture()
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return fake


def test_wandb_mirror_logs_every_row_against_step_and_resumes_the_same_run(fake_wandb, tmp_path):
    (tmp_path / "config.json").write_text('{"model": {"a": 1}, "train": {"lr": 0.1}, "x": 2}')
    rows = [
        {"step": 2, "epoch": 0, "loss": 1.5, "lr": 0.001, "images_per_s": 10.0, "flag": True},
        {"step": 2, "epoch": 1, "val_loss": 1.25, "val_loss_patient": 2.0},
    ]
    mirror = open_mirror("wandb", tmp_path)
    for row in rows:
        mirror.write(row)
    mirror.close()
    init = fake_wandb.inits[0]
    assert init["project"] == "slimp" and init["name"] == tmp_path.name
    assert init["dir"] == str(tmp_path) and init["resume"] == "allow"
    assert init["config"] == {"model": {"a": 1}, "train": {"lr": 0.1}}  # not the other keys
    run = fake_wandb.runs[0]
    assert run.metrics == {"step": None, "train/*": "step", "val/*": "step"}
    assert run.logged == [
        {"step": 2, "train/loss": 1.5, "train/lr": 0.001, "train/images_per_s": 10.0},
        {"step": 2, "val/loss": 1.25, "val/loss_patient": 2.0},
    ]
    assert run.finished
    saved = (tmp_path / WANDB_DIR / WANDB_ID_FILE).read_text().strip()
    assert saved == init["id"]
    # --resume continues that W&B run; a fresh run gets a new id
    open_mirror("tensorboard,wandb", tmp_path, resume_step=2).close()
    assert fake_wandb.inits[1]["id"] == saved
    open_mirror("wandb", tmp_path).close()
    assert fake_wandb.inits[2]["id"] != saved


def test_wandb_init_failure_is_one_line(fake_wandb, tmp_path):
    def refuse(**kw):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login(key=...)")

    fake_wandb.init = refuse
    with pytest.raises(SlimpError) as err:
        open_mirror("wandb", tmp_path)
    assert "\n" not in str(err.value)
    assert "api_key not configured" in str(err.value) and "WANDB_MODE=offline" in str(err.value)


def test_pretrain_reports_to_wandb_through_the_cli(fake_wandb, synth_shards, tmp_path, run_cli):
    res = run_cli("pretrain", synth_shards, "--out", tmp_path / "r", *TINY, "--max-steps", "4")
    assert res.exit_code == 0, res.output
    assert not fake_wandb.inits  # default: none
    res = run_cli(
        "pretrain", synth_shards, "--out", tmp_path / "w", *TINY, "--max-steps", "4",
        "--report-to", "wandb",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = read_metrics(tmp_path / "w", kind="all")
    logged = fake_wandb.runs[0].logged
    assert [r["step"] for r in logged] == [r["step"] for r in rows] and len(rows) >= 2
    assert [r.get("train/loss") for r in logged] == [r.get("loss") for r in rows]
    assert fake_wandb.inits[0]["config"]["train"]["report_to"] == "wandb"


def test_report_to_is_checked_on_the_command_line(run_slimp, tmp_path):
    res = run_slimp("pretrain", tmp_path, "--out", tmp_path / "r", "--report-to", "wandb,mlflow")
    assert res.returncode == 2 and "mlflow" in res.stderr and "Traceback" not in res.stderr


def test_missing_wandb_is_one_line_naming_the_extra(monkeypatch, synth_shards, tmp_path, run_cli):
    monkeypatch.setitem(sys.modules, "wandb", None)  # a None entry makes `import` fail
    res = run_cli("pretrain", synth_shards, "--out", tmp_path / "r", *TINY, "--report-to", "wandb")
    assert res.exit_code == 1
    assert res.stderr.startswith("error: --report-to wandb needs the wandb package: ")
    assert "slimp[wandb]" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # stopped before training


def test_wandb_offline_for_real(synth_shards, tmp_path, run_slimp):
    """The installed executable, the real package, no network: WANDB_MODE=offline."""
    pytest.importorskip("wandb", reason="the optional wandb package is absent")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    out = tmp_path / "run"
    res = run_slimp(
        "pretrain", synth_shards, "--out", out, *TINY, "--max-steps", "4",
        "--report-to", "tensorboard,wandb", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    run_id = (out / WANDB_DIR / WANDB_ID_FILE).read_text().strip()
    files = list((out / WANDB_DIR).glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1, list((out / WANDB_DIR).iterdir())
    data = files[0].read_bytes()
    rows = read_metrics(out)
    assert b"train/loss" in data
    for row in rows:  # each logged loss, as the JSON number W&B stores
        assert repr(row["loss"]).encode() in data
    assert (out / "tensorboard").is_dir()
    # --resume continues the same W&B run
    res = run_slimp(
        "pretrain", synth_shards, "--out", out, *TINY, "--max-steps", "6", "--resume",
        "--report-to", "wandb", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (out / WANDB_DIR / WANDB_ID_FILE).read_text().strip() == run_id
    assert len(list((out / WANDB_DIR).glob(f"offline-run-*-{run_id}"))) == 2


def test_reporters_match_the_cli_choices():
    from slimp_cli.commands import choices

    assert choices.REPORT_TO == report.REPORTERS
