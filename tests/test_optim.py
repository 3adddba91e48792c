"""The AdamW implementation per device (train/optim.py): the same update whichever is used,
the rule applied and recorded in config.json, and the timing helper."""

from __future__ import annotations

import json

import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.train import optim


def adamw_reference(p, g, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0):
    """AdamW written out (Loshchilov & Hutter, decoupled decay): the parameter after `step`."""
    p = p * (1 - lr * wd)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


@pytest.mark.parametrize("impl", optim.IMPLS)
def test_every_implementation_steps_like_the_written_out_adamw(impl):
    assert optim.fused_available("cpu")  # torch >= 2.4 (pyproject): every candidate runs here
    torch.manual_seed(0)
    w = torch.randn(5, 4, dtype=torch.float64)
    p = torch.nn.Parameter(w.clone())
    opt = optim.make_optimizer(
        [{"params": [p], "weight_decay": 0.05}], lr=1e-2, device="cpu", impl=impl
    )
    ref, m, v = w.clone(), torch.zeros_like(w), torch.zeros_like(w)
    for step in (1, 2, 3):
        g = torch.randn_like(w)
        p.grad = g.clone()
        opt.step()
        ref, m, v = adamw_reference(ref, g, m, v, step=step, lr=1e-2, wd=0.05)
    torch.testing.assert_close(p.detach(), ref, rtol=1e-10, atol=1e-12)


def test_the_rule_picks_per_device_and_falls_back_without_fused(monkeypatch):
    assert optim.optimizer_impl("cpu") == optim.IMPL_BY_DEVICE["cpu"]
    monkeypatch.setattr(optim, "IMPL_BY_DEVICE", {"cpu": "fused"})
    assert optim.optimizer_impl("cpu") == (
        "fused" if optim.fused_available("cpu") else optim.DEFAULT_IMPL
    )
    monkeypatch.setattr(optim, "fused_available", lambda device: False)
    assert optim.optimizer_impl("cpu") == optim.DEFAULT_IMPL
    assert optim.optimizer_impl("meta") == optim.DEFAULT_IMPL  # not in the table


def test_make_optimizer_uses_the_chosen_implementation(monkeypatch):
    p = torch.nn.Parameter(torch.zeros(3))
    monkeypatch.setattr(optim, "IMPL_BY_DEVICE", {"cpu": "single-tensor"})
    d = optim.make_optimizer([p], lr=1e-3, device="cpu").defaults
    assert (d["foreach"], d["fused"]) == (False, False)
    monkeypatch.setattr(optim, "IMPL_BY_DEVICE", {"cpu": "foreach"})
    d = optim.make_optimizer([p], lr=1e-3, device="cpu").defaults
    assert (d["foreach"], d["fused"]) == (True, False)
    with pytest.raises(SlimpError, match="unknown optimiser implementation"):
        optim.make_optimizer([p], lr=1e-3, device="cpu", impl="magic")


def test_time_optimizers_times_each_candidate_and_leaves_the_parameters_alone():
    params = [torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(64))]
    before = [p.detach().clone() for p in params]
    times = optim.time_optimizers(params, steps=1)
    assert {"single-tensor", "foreach"} <= set(times)
    assert all(t > 0 for t in times.values())
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    with pytest.raises(SlimpError, match="steps"):
        optim.time_optimizers(params, steps=0)


def test_a_run_records_the_implementation_in_its_environment(synth_shards, tmp_path):
    from slimp_cli.models.config import ModelConfig
    from slimp_cli.train import pretrain

    run = pretrain(
        synth_shards,
        tmp_path / "run",
        model=ModelConfig(image_model="vit_test", img_size=32),
        train=dict(
            patients_per_batch=4, lesions_per_patient=2, max_steps=1, device="cpu", workers=0
        ),
    )
    env = json.loads((run / "config.json").read_text())["environment"]
    assert env["optimizer_impl"] == optim.optimizer_impl("cpu")
