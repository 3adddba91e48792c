"""User-facing errors: the CLI prints them as one line and exits 1, never a traceback."""


class SlimpError(Exception):
    """A problem the user can fix (bad file, option, column...). Message names the culprit."""


class TrainingInterrupted(SlimpError):
    """Ctrl-C / SIGTERM stopped training at a step boundary, after saving a checkpoint.

    The CLI exits with status 130 (the shell's code for an interrupt)."""


# numpy's and scikit-learn's seeds are unsigned 32-bit: one bound for every --seed/--seeds.
MAX_SEED = 2**32 - 1


def check_seed(value, option: str = "--seed") -> int:
    """`value` if it is an integer seed in [0, 2**32 - 1]; else a SlimpError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise SlimpError(f"{option} must be an integer from 0 to {MAX_SEED} (got {value!r})")
    return value
