"""Training: SLIMP pre-training (`pretrain`) and continual pre-training (`adapt`).

Library entry points (the CLI only parses options):
- `pretrain(data, out, *, model=None, train=None, resume=False, progress=False) -> Path`
- `adapt(checkpoint, data, out, *, train=None, tune=None, resume=False, progress=False) -> Path`

Loading a finished run is `slimp_cli.models.runs.load_run` (nothing outside `train/` and the CLI
imports `train/`).
"""

from .adapt import ADAPT_DEFAULTS, adapt, adapt_run
from .pretrain import pretrain, pretrain_run
from .train_config import TrainConfig

__all__ = ["ADAPT_DEFAULTS", "TrainConfig", "adapt", "adapt_run", "pretrain", "pretrain_run"]
