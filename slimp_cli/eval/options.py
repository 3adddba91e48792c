"""Checks of evaluation options that the libraries below would reject with a traceback.

scikit-learn refuses seeds outside [0, 2**32 - 1] and C <= 0; a kNN temperature of 0 divides
by zero and turns every vote into NaN. Each check raises a SlimpError naming the option.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..core.errors import SlimpError, check_seed


def check_seeds(seeds: Sequence[int], option: str = "--seeds") -> list[int]:
    """Every seed an integer in [0, 2**32 - 1]; returns them as ints."""
    return [check_seed(s, option) for s in seeds]


def check_positive(value: float, option: str) -> float:
    """A finite number > 0 (C, temperatures)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise SlimpError(f"{option} must be a finite number > 0 (got {value!r})")
    return float(value)


def check_probe_options(*, seeds: Sequence[int], C: float, knn_temperature: float) -> None:
    """The probe options a classifier cannot take (see module doc)."""
    check_seeds(seeds)
    check_positive(C, "--C")
    check_positive(knn_temperature, "--knn-temperature")
