"""Training: SLIMP pre-training (`pretrain`) and continual pre-training (`adapt`).

Library entry points (the CLI only parses options):
- `pretrain(data, out, *, model=None, train=None, resume=False, progress=False) -> Path`
- `adapt(checkpoint, data, out, *, train=None, tune=None, resume=False, progress=False) -> Path`
- both are `run_stage(stage, data, out, *, source=None, model=None, train=None, tune=None,
  resume=False, progress=False, verify=False, shard_url=None) -> TrainResult` with their
  `Stage` (`STAGES["pretrain"]`, `STAGES["adapt"]`: train/stage.py's table of how they differ).

Loading a finished run is `slimp_cli.models.runs.load_run` (nothing outside `train/` and the CLI
imports `train/`).
"""

from .adapt import ADAPT_DEFAULTS, adapt, adapt_run
from .pretrain import pretrain, pretrain_run
from .stage import STAGES, Stage, run_stage
from .train_config import TrainConfig

__all__ = [
    "ADAPT_DEFAULTS",
    "STAGES",
    "Stage",
    "TrainConfig",
    "adapt",
    "adapt_run",
    "pretrain",
    "pretrain_run",
    "run_stage",
]
