"""Checkpoints: tensors and plain containers only (`torch.load(path, weights_only=True)` works).

A checkpoint holds the model weights, optimiser, scheduler, the training position (epoch, step
in epoch, global step), every RNG state the run uses (torch CPU/CUDA, numpy, python `random`;
stored as tensors and lists, never numpy objects) and a copy of the run's config (so a lone
checkpoint file still rebuilds its model). Files are written under a temporary name and renamed
(`slimp_cli.paths.atomic_path`): an interrupted save never leaves a file that looks complete.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SlimpError
from ..paths import atomic_path

FORMAT = "slimp-checkpoint"
VERSION = 1
LAST = "checkpoint-last.pt"


def epoch_name(epoch: int) -> str:
    """File name of the checkpoint written after `epoch` (1-based count of finished epochs)."""
    return f"checkpoint-epoch-{epoch:04d}.pt"


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors / plain lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's device only (get_rng_state_all would open a context on every GPU).
        state["cuda"] = [torch.cuda.get_rng_state()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0].cpu())


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer, scheduler,
                    epoch: int, step_in_epoch: int, step: int, config: dict,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint atomically. `epoch`/`step_in_epoch`: where training continues."""
    path = Path(path)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "step_in_epoch": int(step_in_epoch),
        "step": int(step),
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `weights_only=True`; SlimpError when missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise SlimpError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated/foreign file is a user error
        raise SlimpError(f"{path}: not a readable slimp checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise SlimpError(f"{path}: not a slimp checkpoint (no '{FORMAT}' format marker)")
    if state.get("version", 0) > VERSION:
        raise SlimpError(f"{path}: checkpoint version {state['version']} is newer than this "
                         f"slimp understands ({VERSION}); upgrade slimp")
    return state
