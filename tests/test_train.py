"""Pre-training: loss curve, run dir contract, rebuild from config.json, exact resume, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.models.runs import load_run, read_config, read_metrics
from slimp_cli.train import TrainConfig, pretrain
from slimp_cli.train.loop import lr_factor

# Tiny models for CPU tests: a 2-block ViT on 32 px images, TRACE d = 32.
TINY = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)
FAST = dict(workers=0, device="cpu", log_every=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_config_validation_and_roundtrip():
    cfg = TrainConfig(patients_per_batch=8, lesions_per_patient=4, epochs=2, max_steps=5)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().patients_per_batch == 4 and TrainConfig().lesions_per_patient == 100
    assert TrainConfig().epochs == 150 and TrainConfig().lr == 1e-4 and TrainConfig().lam == 0.9
    for bad in (
        dict(patients_per_batch=0),
        dict(lr=-1.0),
        dict(lam=1.5),
        dict(device="tpu"),
        dict(method="foo"),
        dict(max_steps=0),
        dict(augment="yes"),
    ):
        with pytest.raises(SlimpError):
            TrainConfig(**bad)
    with pytest.raises(SlimpError, match="unknown train option"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(TypeError):
        TrainConfig(8)  # keyword-only


def test_schedule_warms_up_then_decays_to_zero():
    f = [lr_factor(s, warmup=5, total=100) for s in range(100)]
    assert f[0] == pytest.approx(0.2) and f[4] == 1.0 and f[5] == 1.0
    assert all(a >= b for a, b in zip(f[5:], f[6:])) and f[-1] < 0.01


def test_scheduler_rates_equal_the_closed_form_and_resume_exactly():
    """The optimiser's lr at each step: (s+1)/W * lr in warm-up (the peak at its last step),
    then lr/2 (1 + cos(pi (s - W) / (T - W))), 0 after T; a reloaded state continues them."""
    import math

    from slimp_cli.train.loop import make_scheduler

    base, warmup, total = 1e-3, 4, 20

    def fresh():
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
        return opt, make_scheduler(opt, warmup=warmup, total=total)

    opt, sched = fresh()
    rates = []
    for _ in range(total + 2):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(base / 4) and rates[1] == pytest.approx(base / 2)
    assert rates[3] == pytest.approx(base) and rates[4] == pytest.approx(base)  # warm-up end
    assert rates[12] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert rates[19] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert rates[20] == 0.0 and rates[21] == 0.0  # the end
    # resume: a new scheduler loading the state at step 7 gives the same later rates
    state_opt, state_sched = fresh()
    for _ in range(7):
        state_opt.step()
        state_sched.step()
    opt2, sched2 = fresh()
    opt2.load_state_dict(state_opt.state_dict())
    sched2.load_state_dict(state_sched.state_dict())
    later = []
    for _ in range(7, total):
        later.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert later == rates[7:total]


def test_loss_falls_on_pad(trained_pad):
    metrics = read_metrics(trained_pad.run_dir)
    assert [m["step"] for m in metrics] == list(range(1, 101))
    loss = np.array([m["loss"] for m in metrics])
    patient = np.array([m["loss_patient"] for m in metrics])
    # measured (seed 0): total 1.15 -> 0.81, outer 2.23 -> 1.46 (chance ln 8 = 2.08)
    assert loss[-10:].mean() < 0.8 * loss[:10].mean()
    assert patient[-10:].mean() < 0.8 * patient[:10].mean()
    for m in metrics:
        assert {
            "step",
            "epoch",
            "loss",
            "loss_lesions",
            "loss_patient",
            "lr",
            "images_per_s",
        } <= set(m)
        assert np.isfinite(m["loss"]) and m["images_per_s"] > 0


RESUME_TRAIN = dict(
    FAST,
    patients_per_batch=32,
    lesions_per_patient=3,
    epochs=3,
    warmup_steps=3,
    lr=1e-3,
    augment=True,
)
RESUME_MODEL = dict(TINY, tab_dropout=0.1)  # dropout: the RNG state must be restored too


@pytest.fixture(scope="module")
def uninterrupted(pad_shards, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("resume") / "full"
    return pretrain(
        pad_shards,
        out,
        model=RESUME_MODEL,
        train=dict(RESUME_TRAIN, max_steps=16, keep_epoch_checkpoints=True),
    )


# 376 training patients (10% held out) / B=32: 11 steps an epoch
@pytest.mark.parametrize("k", [5, 11])  # inside epoch 1 / at the end of epoch 1
def test_resume_reaches_the_same_weights(pad_shards, uninterrupted, tmp_path, k):
    out = tmp_path / "run"
    pretrain(pad_shards, out, model=RESUME_MODEL, train=dict(RESUME_TRAIN, max_steps=k))
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["step"] == k
    # options not given again keep their saved values; workers may change freely
    pretrain(pad_shards, out, train={"max_steps": 16, "workers": 1}, resume=True)
    a = torch.load(uninterrupted / "checkpoint-last.pt", weights_only=True)
    b = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert a["step"] == b["step"] == 16
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    assert [m["step"] for m in read_metrics(out)][-1] == 16
    epoch_file = uninterrupted / "checkpoint-epoch-0001.pt"
    assert torch.load(epoch_file, weights_only=True)["step"] == 11
    assert not (out / "checkpoint-epoch-0001.pt").exists()


def test_resume_refuses_other_options_or_data(pad_shards, derm7pt_shards, uninterrupted):
    with pytest.raises(SlimpError, match=r"lr: 0.001 -> 0.01"):
        pretrain(pad_shards, uninterrupted, train={"lr": 1e-2}, resume=True)
    with pytest.raises(SlimpError, match="does not have the columns"):
        pretrain(derm7pt_shards, uninterrupted, resume=True)
    with pytest.raises(SlimpError, match="already holds a run"):
        pretrain(pad_shards, uninterrupted, model=TINY, train=RESUME_TRAIN)


def test_bad_input_errors(pad_shards, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(
        SlimpError, match="data has 376 training patients but --patients-per-batch is 500; lower it"
    ):
        pretrain(pad_shards, out, model=TINY, train=dict(FAST, patients_per_batch=500))
    assert not (out / "config.json").exists()
    # SM3 pairs dermoscopic and clinical images: PAD-UFES-20 records no image modality
    with pytest.raises(SlimpError, match="no image records a modality"):
        pretrain(pad_shards, out, model=TINY, train=dict(FAST, method="sm3"))
    with pytest.raises(SlimpError, match="unknown image model 'no_such_vit'"):
        pretrain(pad_shards, out, model=dict(TINY, image_model="no_such_vit"), train=FAST)
    with pytest.raises(SlimpError, match="has no .*checkpoint-last.pt"):
        pretrain(pad_shards, out, resume=True)
    with pytest.raises(SlimpError, match="no such folder"):
        pretrain(tmp_path / "nothing", out, model=TINY, train=FAST)
    if not torch.cuda.is_available():
        with pytest.raises(
            SlimpError,
            match="--device cuda but no CUDA device is available; use --device auto or cpu",
        ):
            pretrain(pad_shards, out, model=TINY, train=dict(FAST, device="cuda"))
    with pytest.raises(SlimpError, match="no such run dir or checkpoint file"):
        load_run(tmp_path / "nothing")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SlimpError, match="not a readable slimp checkpoint"):
        load_run(tmp_path / "junk.pt")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    pad_shards, tmp_path, monkeypatch
):
    from slimp_cli.train import loop

    real = loop._compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 14:  # epoch 2 (11 steps per epoch), after the epoch-1 checkpoint
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(loop, "_compute_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(SlimpError, match=r"non-finite .* at step 14 .*checkpoint-last.pt"):
        pretrain(pad_shards, out, model=TINY, train=dict(RESUME_TRAIN, max_steps=20))
    state = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 11
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_flat_notice_and_image_variant(derm7pt_shards, pad_shards, tmp_path, capsys):
    run = pretrain(
        derm7pt_shards,
        tmp_path / "flat",
        model=TINY,
        train=dict(FAST, patients_per_batch=16, lesions_per_patient=2, max_steps=3),
    )
    assert "no patient-level features: training the flat variant" in capsys.readouterr().err
    assert read_config(run)["variant"] == "flat"
    _run = load_run(run)
    model, _, _ = _run.model, _run.config, _run.schema
    assert model.variant == "flat"
    run = pretrain(
        pad_shards,
        tmp_path / "image",
        model=dict(TINY, variant="image"),
        train=dict(FAST, patients_per_batch=8, lesions_per_patient=2, max_steps=3),
    )
    metrics = read_metrics(run)
    assert len(metrics) == 3 and all(np.isfinite(m["loss"]) for m in metrics)


def test_cli_pretrain(pad_shards, tmp_path):
    from typer.testing import CliRunner

    from slimp_cli.cli import app

    out = tmp_path / "run"
    args = [
        "pretrain",
        str(pad_shards),
        "--out",
        str(out),
        "--image-model",
        "vit_test",
        "--img-size",
        "32",
        "--tab-dim",
        "32",
        "--patients-per-batch",
        "8",
        "--lesions-per-patient",
        "2",
        "--max-steps",
        "2",
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        "--lr",
        "3e-4",
        "--lam",
        "0.8",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = read_config(out)
    assert cfg["train"]["lr"] == 3e-4 and cfg["train"]["lam"] == 0.8
    assert cfg["model"]["tab_dim"] == 32 and cfg["train"]["patients_per_batch"] == 8
    result = CliRunner().invoke(
        app,
        [
            "pretrain",
            str(pad_shards),
            "--out",
            str(out),
            "--resume",
            "--max-steps",
            "3",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_metrics(out)[-1]["step"] == 3


def test_precision_controls_resolve_per_device():
    from slimp_cli.train.precision import autocast, grad_scaler, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert grad_scaler("fp32", cpu) is None
    with autocast("fp32", cpu):  # a no-op context
        assert not torch.is_autocast_enabled()
    for name in ("bf16", "fp16"):
        with pytest.raises(SlimpError, match=f"--precision {name} needs a CUDA device"):
            resolve_precision(name, cpu)
    with pytest.raises(SlimpError, match="unknown --precision"):
        resolve_precision("fp8", cpu)
    with pytest.raises(SlimpError, match="unknown precision"):
        TrainConfig(precision="half")


def test_grad_checkpointing_gives_the_same_step(pad_shards, tmp_path):
    # recomputing activations in the backward pass changes memory, not the result
    base = dict(FAST, patients_per_batch=8, lesions_per_patient=2, max_steps=2, holdout=0.1)
    a = pretrain(pad_shards, tmp_path / "a", model=TINY, train=base)
    b = pretrain(pad_shards, tmp_path / "b", model=TINY, train=dict(base, grad_checkpointing=True))
    sa = torch.load(a / "checkpoint-last.pt", weights_only=True)["model"]
    sb = torch.load(b / "checkpoint-last.pt", weights_only=True)["model"]
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6)


def test_default_workers_follow_the_usable_cores(monkeypatch):
    from slimp_cli.core import devices

    monkeypatch.setattr(
        devices.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False
    )
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert devices.available_cpus() == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert devices.available_cpus() <= 6 and devices.default_workers() <= 16
