"""Training: SLIMP pre-training (`pretrain`), continual pre-training (`adapt`), run dirs.

Library entry points (the CLI only parses options):
- `pretrain(data, out, *, model=None, train=None, resume=False, progress=False) -> Path`
- `adapt(checkpoint, data, out, *, train=None, tune=None, resume=False, progress=False) -> Path`
- `load_model(checkpoint_or_rundir, *, device="cpu") -> (model, config_dict, schema)`
"""

from .adapt import ADAPT_DEFAULTS, adapt, adapt_run
from .config import TrainConfig
from .pretrain import pretrain, pretrain_run
from .rundir import load_model, read_config, read_metrics

__all__ = [
    "ADAPT_DEFAULTS",
    "TrainConfig",
    "adapt",
    "adapt_run",
    "load_model",
    "pretrain",
    "pretrain_run",
    "read_config",
    "read_metrics",
]
