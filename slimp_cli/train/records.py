"""What a run records about where it ran, and what may be taken from a saved run.

- `environment(device, world_size)`: the `environment` block of `config.json`: slimp, Python,
  torch, timm, CUDA / cuDNN versions, the GPU name, the git commit of the slimp source when it
  is a git checkout (None otherwise, e.g. an installed wheel), the command line (`sys.argv`),
  the resolved device and the world size (number of processes).
- `check_world_size(saved, world_size, run_dir)`: `--resume` with another number of processes
  would silently change the global batch and the schedule: refused with a one-line reason.
- `recipe_from_config(path)`: the model and training options of a saved `config.json` (or of
  the run dir holding it), the base that `pretrain --config FILE` applies its options over.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__
from ..errors import SlimpError


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the git checkout holding `where` (default: slimp's own source), with a
    `-dirty` suffix when it has uncommitted changes; None when not a checkout or no git."""
    where = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        run = lambda *args: subprocess.run(  # noqa: E731
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty and commit else commit or None


def environment(device: torch.device | str, world_size: int) -> dict:
    """The `environment` block of a run's config.json (see the module docstring)."""
    import timm

    device = torch.device(device)
    cuda = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    gpu = None
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    record = {
        "slimp": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": cuda,
        "cudnn": cudnn,
        "gpu": gpu,
        "git_commit": git_commit(),
        "argv": list(sys.argv),
        "device": str(device),
        "world_size": int(world_size),
    }
    # Plain JSON types only: the config is copied into checkpoints, which load with
    # weights_only=True (torch.__version__ is a str subclass that such a load refuses).
    return json.loads(json.dumps(record, default=str))


def check_world_size(saved_config: dict | None, world_size: int, run_dir: Path) -> None:
    """SlimpError when a run saved with another number of processes is resumed.

    Each process takes B patients of every step, so the global batch, the steps per epoch and
    the schedule depend on the world size. Runs saved before it was recorded are not checked.
    """
    saved = ((saved_config or {}).get("environment") or {}).get("world_size")
    if saved is not None and int(saved) != int(world_size):
        raise SlimpError(
            f"--resume with {procs(world_size)} but the run in {run_dir} was trained with "
            f"{procs(int(saved))} (the global batch and schedule depend on it); resume with "
            f"{procs(int(saved))}, or start a new run with another --out"
        )


def procs(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


def recipe_from_config(path: str | Path) -> tuple[dict, dict]:
    """(model options, train options) of a saved run's config.json, or of the run dir holding
    it: what `pretrain --config FILE` starts from before the options given on the command line.
    """
    from ..paths import read_json
    from ..runs import CONFIG, RUN_FORMAT

    path = Path(path)
    if path.is_dir():
        path = path / CONFIG
    if not path.is_file():
        raise SlimpError(f"--config {path}: no such file (give a run's config.json)")
    cfg = read_json(path)
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        raise SlimpError(f"--config {path}: not a slimp run config (format '{RUN_FORMAT}')")
    model, train = cfg.get("model"), cfg.get("train")
    if not isinstance(model, dict) or not isinstance(train, dict):
        raise SlimpError(f"--config {path}: lacks the 'model' and 'train' sections")
    return dict(model), dict(train)
