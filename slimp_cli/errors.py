"""User-facing errors: the CLI prints them as one line and exits 1, never a traceback."""


class SlimpError(Exception):
    """A problem the user can fix (bad file, option, column...). Message names the culprit."""


class TrainingInterrupted(SlimpError):
    """Ctrl-C / SIGTERM stopped training at a step boundary, after saving a checkpoint.

    The CLI exits with status 130 (the shell's code for an interrupt)."""
