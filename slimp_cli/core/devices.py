"""`--device` names -> torch devices: one rule for every command (train, embed, search)."""

from __future__ import annotations

import os
import re

import torch

from .errors import SlimpError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:N or mps"


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """`auto|cpu|cuda|cuda:N|mps` -> a torch.device; SlimpError when it is not available.

    `cuda` and `auto` pick this process's GPU under torchrun (`local_rank`).
    """
    name = str(name).strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SlimpError("--device mps but no Apple GPU (MPS) is available; use cpu")
        return torch.device("mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise SlimpError(
                f"--device {name} but no CUDA device is available; use --device auto or cpu"
            )
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise SlimpError(
                f"--device {name}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", int(index))
    raise SlimpError(f"unknown device '{name}'; choose {DEVICE_HELP}")


def check_device_name(name: str) -> None:
    """SlimpError unless `name` is a device name `resolve_device` understands (not whether the
    device exists here: a saved config may name a GPU of another machine)."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name.strip().lower()):
        raise SlimpError(f"unknown device {name!r}; choose {DEVICE_HELP}")


def available_cpus() -> int:
    """CPU cores this process may use: its affinity mask (taskset, SLURM's binding), capped by
    a cgroup v2 CPU quota (containers) and by SLURM_CPUS_PER_TASK when set."""

    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def default_workers() -> int:
    """DataLoader workers when none are asked: one per usable core, at most 16 (beyond that
    the main process, not decoding, is the bottleneck)."""
    return min(16, available_cpus())
