"""Numeric precision of training: `--precision auto|bf16|fp16|fp32`.

bf16 autocast where the GPU has fast bf16 (Ampere and newer); fp16 autocast with a gradient
scaler on GPUs without it (T4, P100, V100: free notebooks), where bf16 is emulated and slow;
fp32 on the CPU (CPU autocast gains little and changes results). The scaler's state is saved
in checkpoints, so a resumed fp16 run continues exactly.
"""

from __future__ import annotations

import contextlib

import torch

from ..core.errors import SlimpError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision to train in: "bf16", "fp16" or "fp32"."""
    if name not in PRECISIONS:
        raise SlimpError(f"unknown --precision {name!r}; choose {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            raise SlimpError(f"--precision {name} needs a CUDA device; on {device.type} use fp32")
        return "fp32"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def autocast(precision: str, device: torch.device):
    """The autocast context of a precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device):
    """A gradient scaler for fp16 (None otherwise: bf16 has fp32's range)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
