"""The AdamW implementation per device, chosen by measurement (`make_optimizer`).

torch's AdamW has three implementations that compute the same update: `single-tensor` (a
Python loop over the parameters; torch's default on the CPU), `foreach` (multi-tensor ops over
lists of them; torch's default on CUDA) and `fused` (one kernel over every parameter; CUDA, and
CPU since torch 2.4). Which is
fastest depends on the device: the issue measured foreach 4-10x slower than single-tensor on a
2-core CPU over two ResNet-18s. `time_optimizers` times the candidates on a model's real
parameters; `IMPL_BY_DEVICE` is the rule those timings gave (docs/internals.md "Optimiser
implementation"), fixed per device type rather than re-timed in every run because the
implementations may round differently in the last bits: a run resumed on the same device type
must step with the same implementation to stay exact, and a timing on a shared machine is noisy.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from ..core.errors import SlimpError

IMPLS = ("single-tensor", "foreach", "fused")
# Measured with `python benchmarks/pretrain.py --optimizers` (ViT-S/16 SLIMP model, ~27-31M
# parameters): see docs/internals.md. CUDA: fused. CPU: fused, measured 3-7x faster than the
# single-tensor loop (torch's CPU default) and 2-5x faster than foreach. Devices not listed
# (mps, ...), and a device whose torch build lacks fused AdamW, use the single-tensor loop: it
# runs everywhere.
IMPL_BY_DEVICE = {"cpu": "fused", "cuda": "fused"}
DEFAULT_IMPL = "single-tensor"


def impl_kwargs(impl: str) -> dict:
    """torch.optim.AdamW keyword arguments selecting `impl` (one of IMPLS)."""
    if impl == "single-tensor":
        return {"foreach": False, "fused": False}
    if impl == "foreach":
        return {"foreach": True, "fused": False}
    if impl == "fused":
        return {"fused": True}
    raise SlimpError(f"unknown optimiser implementation {impl!r}; choose {', '.join(IMPLS)}")


def optimizer_impl(device: torch.device | str) -> str:
    """The AdamW implementation `make_optimizer` uses on `device` (recorded in config.json's
    environment as `optimizer_impl`)."""
    device = torch.device(device)
    impl = IMPL_BY_DEVICE.get(device.type, DEFAULT_IMPL)
    if impl == "fused" and not fused_available(device):
        return DEFAULT_IMPL
    return impl


def fused_available(device: torch.device | str) -> bool:
    """Whether this torch build has fused AdamW on `device` (CPU: torch >= 2.4)."""
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


def make_optimizer(
    groups: Iterable, *, lr: float, device: torch.device | str, impl: str | None = None
) -> torch.optim.AdamW:
    """AdamW over `groups` (parameter groups) with the implementation chosen for `device`
    (`optimizer_impl`), or `impl` when given."""
    impl = impl or optimizer_impl(device)
    return torch.optim.AdamW(groups, lr=lr, **impl_kwargs(impl))


def time_optimizers(
    params: list[torch.nn.Parameter],
    *,
    steps: int = 3,
    impls: Iterable[str] = IMPLS,
) -> dict[str, float]:
    """Seconds per AdamW step of each implementation on copies of `params` (with random
    gradients), after one warm-up step; an implementation the device lacks is left out.

    The copies leave `params` untouched; memory: about four times the parameters per candidate.
    """
    if steps < 1:
        raise SlimpError(f"steps must be >= 1 (got {steps})")
    out = {}
    for impl in impls:
        copies = [p.detach().clone().requires_grad_(True) for p in params]
        for c in copies:
            c.grad = torch.randn_like(c)
        try:
            opt = torch.optim.AdamW(copies, lr=1e-4, **impl_kwargs(impl))
            opt.step()  # warm-up: allocates the state
        except (RuntimeError, NotImplementedError):  # e.g. fused on a device without it
            continue
        _sync(copies)
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        _sync(copies)
        out[impl] = (time.perf_counter() - t0) / steps
        del opt, copies
    return out


def _sync(params: list[torch.Tensor]) -> None:
    if params and params[0].device.type == "cuda":
        torch.cuda.synchronize(params[0].device)
