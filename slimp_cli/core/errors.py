"""User-facing errors: the CLI prints them as one line and exits 1, never a traceback."""

import sys


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


# --- Ctrl-C --------------------------------------------------------------------------------
# A KeyboardInterrupt raised while Python runs a finaliser (a weakref callback, __del__) is
# printed as "Exception ignored" and swallowed: the command would go on and publish what the
# user tried to stop. The CLI's SIGINT handler therefore also records the interrupt here, and
# every writer asks `raise_if_interrupted()` before it renames its output into place.
_INTERRUPT: dict[str, str | None] = {"signal": None}


def _on_sigint(signum, frame) -> None:
    _INTERRUPT["signal"] = "SIGINT"
    raise KeyboardInterrupt


def _unraisable(info) -> None:
    """sys.unraisablehook: a KeyboardInterrupt that landed in a finaliser is recorded (the main
    thread raises it again), and what a Ctrl-C leaves half-built fails in its finaliser (a
    DataLoader iterator interrupted in its __init__): neither is printed, so an interrupted
    command says one line. Everything else goes to Python's hook."""
    if isinstance(info.exc_value, KeyboardInterrupt) or interrupted():
        return
    sys.__unraisablehook__(info)


def install_interrupt_handler() -> None:
    """SIGINT -> record it, then raise KeyboardInterrupt (as Python's own handler does); a
    KeyboardInterrupt swallowed by a finaliser is not printed (`_unraisable`).

    Only from the main thread and over Python's default handler (never over one a caller
    installed, e.g. training's stop-at-a-step-boundary handler)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _on_sigint):
        signal.signal(signal.SIGINT, _on_sigint)
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _unraisable


def interrupted() -> bool:
    """Whether a SIGINT reached the CLI's handler in this process (even if swallowed since)."""
    return _INTERRUPT["signal"] is not None


def raise_if_interrupted() -> None:
    """KeyboardInterrupt again when a Ctrl-C was swallowed by a finaliser: nothing is published
    after the user asked to stop."""
    if interrupted():
        raise KeyboardInterrupt
