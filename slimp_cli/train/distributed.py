"""Several processes (`torchrun`): process-group setup and the all-gather used by the losses.

`torchrun --nproc-per-node K slimp pretrain ...` (or `python -m torch.distributed.run`) sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `init_from_env()` joins the group
(nccl on CUDA, gloo on CPU). Each rank takes a disjoint slice of every global batch
(`PatientBatchSampler`), DistributedDataParallel averages gradients, and the cross-sample losses
see the rows of every rank as negatives through `gather_with_grad` (differentiable all-gather).

`tests/ddp_check.py` computes the loss of one fixed global batch, so a test can compare K
processes against one (tests/test_distributed.py).

Batch normalisation (SM3's ResNet branches) sees the global batch too (`sync_batch_norm`):
torch's SyncBatchNorm on CUDA, `GlobalBatchNorm` (the same statistics through gloo) elsewhere,
so K processes train as one process on the K-times larger batch (tests/test_sm3_distributed.py)
and no rank normalises with statistics of its own slice (SimCLR's "global BN").
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from ..core.devices import resolve_device
from ..core.errors import SlimpError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); defaults: one process."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise SlimpError(
            "RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)"
        ) from None
    return DistInfo(rank, world, local)


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (no-op for a single process)."""
    info = env_info()
    if not info.enabled:
        return info
    if not dist.is_available():
        raise SlimpError("this torch build has no torch.distributed; run a single process")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return info


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(name: str, info: DistInfo | None = None) -> torch.device:
    """The `--device` of this process (its local GPU under torchrun)."""
    info = info or env_info()
    return resolve_device(name, local_rank=info.local_rank)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather `x` [n, ...] from every rank with gradient; rows may differ in number.

    Returns all rows [sum n_r, ...] in rank order. The backward
    pass sums the gradients of every rank's copy onto the local rows (reduce-scatter), so with
    DDP's gradient averaging the result is the gradient of the global batch's loss.
    """
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0],) + tuple(x.shape[1:]))
        x = torch.cat([x, pad])
    # torch's differentiable all_gather (as open_clip uses): its backward sums every rank's
    # gradient of each slice onto the local rows (reduce-scatter on NCCL, all-to-all + sum on
    # gloo), so with DDP's gradient averaging the result is the global batch's loss gradient.
    parts = dist_nn.all_gather(x)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def loss_kwargs(info: DistInfo, outputs: dict) -> dict:
    """`gather` and `offset` for `compute_loss` (empty for a single process).

    The offset is this rank's first row among the gathered rows of the cross-sample loss:
    patients (nested: `phenotype`), lesions (flat: `image`) or views (image: `view1`).
    """
    if not info.enabled:
        return {}
    if "derm1" in outputs or "logits" in outputs:  # SM3: the global batch's loss on every rank
        return {"gather": gather_with_grad}
    key = next(k for k in ("phenotype", "image", "view1") if k in outputs)
    ref = outputs[key]
    n = torch.tensor([ref.shape[0]], device=ref.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    offset = int(sum(int(s.item()) for s in sizes[: info.rank]))
    return {"gather": gather_with_grad, "offset": offset}


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """True when `value` is finite on every rank (so all ranks stop together)."""
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if info.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over every rank's rows (any backend: torch's SyncBatchNorm is CUDA only).

    In training under torchrun the per-channel mean and (biased) variance are those of the
    global batch, summed over the ranks with a differentiable all-reduce (two passes: the mean,
    then the centred squares, as one process computes them); the running statistics take the
    unbiased variance, as `nn.BatchNorm*` does. Otherwise it is plain batch normalisation. A
    rank with no rows still joins the reductions (SM3 calls its branches on empty batches).

    Shape: [N, C, ...] -> [N, C, ...].
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        if dist.get_world_size() == 1:
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        local = x.new_tensor([x.numel() / max(1, x.shape[1])])
        sums = differentiable_all_reduce(torch.cat([x.sum(dims), local]))
        total = sums[-1]
        if float(total) == 0:  # no rank has a row: nothing to normalise, statistics kept
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)  # as nn.BatchNorm does on an empty batch
            y = x if not self.affine else x * self.weight.view(shape) + self.bias.view(shape)
            return y.to(input.dtype)
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = differentiable_all_reduce((centred * centred).sum(dims)) / total
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (total / max(float(total) - 1.0, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach().to(self.running_var), alpha=m)
        return y.to(input.dtype)


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm of `model` normalise over the global batch (in place; returns it).

    The new layers hold the same Parameter and buffer objects (optimiser state and state-dict
    keys are unchanged). CUDA: timm's `convert_sync_batchnorm` (torch's SyncBatchNorm, and
    timm's fused norm + activation layers kept whole); other devices: `GlobalBatchNorm` for
    plain BatchNorm1d/2d/3d (another kind of batch norm is refused rather than left per rank).
    """
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

    def convert(module: nn.Module) -> nn.Module:
        if isinstance(module, GlobalBatchNorm):
            return module
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if type(module) not in plain:
                raise SlimpError(
                    f"torchrun on {device.type}: the image model's {type(module).__name__} "
                    "layers cannot be synchronised across processes here; use CUDA or one "
                    "process"
                )
            new = GlobalBatchNorm(
                module.num_features,
                eps=module.eps,
                momentum=module.momentum,
                affine=module.affine,
                track_running_stats=module.track_running_stats,
            )
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean = module.running_mean
                new.running_var = module.running_var
                new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            module._modules[name] = convert(child)
        return module

    return convert(model)
