"""User-facing errors: the CLI prints them as one line and exits 1, never a traceback."""


class SlimpError(Exception):
    """A problem the user can fix (bad file, option, column...). Message names the culprit."""
