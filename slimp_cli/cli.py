"""The `slimp` command line: a thin Typer app over the library.

Each area registers its sub-commands from `slimp_cli/commands/<area>.py`. Exit status: 0 on
success; 1 with one line `error: ...` on stderr for a user error (`SlimpError`); 2 with Typer's
usage message for bad usage (unknown option or command, missing argument, a value of the wrong
type or outside its choices); 130 when interrupted. Never a traceback for any of those.
"""

from __future__ import annotations

import os
import sys

from .core.errors import (
    SlimpError,
    TrainingInterrupted,
    install_interrupt_handler,
    interrupted,
    raise_if_interrupted,
)


def _exit_interrupted() -> None:
    """One line and status 130, from anywhere (start-up and shutdown included)."""
    print("interrupted", file=sys.stderr, flush=True)
    sys.exit(130)


# Before the imports below (typer, rich, the command modules: up to a second): a Ctrl-C that
# lands in one of them is recorded, and still ends as one line and 130, never a traceback.
install_interrupt_handler()
try:
    import typer
except KeyboardInterrupt:
    _exit_interrupted()

app = typer.Typer(
    name="slimp",
    help=(
        "SLIMP: learn skin-lesion representations from images and their clinical metadata "
        "(nested image-metadata contrastive pre-training), then evaluate and use them.\n\n"
        "Pipeline: ingest -> pretrain/adapt -> embed -> probe | retrieve | extrapolate -> report. "
        "Try `slimp demo` for the whole pipeline on a generated cohort."
    ),
    no_args_is_help=True,
    add_completion=True,  # --install-completion: option choices complete in the shell
    pretty_exceptions_enable=False,
)


def version_line() -> str:
    """`slimp X (python Y, torch Z, timm W)`, read from the installed metadata (fast)."""
    import platform
    from importlib import metadata

    from . import __version__

    parts = [f"python {platform.python_version()}"]
    for dist in ("torch", "timm"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return f"slimp {__version__} ({', '.join(parts)})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the versions of slimp, Python, torch and timm, and exit.",
    ),
) -> None:
    pass


def _register_all() -> None:
    from .commands import embed as embed_cmds
    from .commands import eval as eval_cmds
    from .commands import explain as explain_cmds
    from .commands import export as export_cmds
    from .commands import ingest as ingest_cmds
    from .commands import report as report_cmds
    from .commands import train as train_cmds

    ingest_cmds.register(app)
    train_cmds.register(app)
    embed_cmds.register(app)
    eval_cmds.register(app)
    export_cmds.register(app)
    explain_cmds.register(app)
    report_cmds.register(app)


try:
    _register_all()
except KeyboardInterrupt:
    _exit_interrupted()


def _class_names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _is_usage_error(exc: BaseException) -> bool:
    """A click usage/parameter error, whichever click raised it: Typer >= 0.20 vendors its own
    copy, so an isinstance check against one `click` package would miss the other's. Such an
    error has an int `exit_code` and a `show()` that prints the usage message."""
    return isinstance(getattr(exc, "exit_code", None), int) and callable(getattr(exc, "show", None))


def _is_abort(exc: BaseException) -> bool:
    """click's Abort (raised for Ctrl-C while parsing or prompting), from any click copy."""
    return "Abort" in _class_names(exc)


def _is_exit(exc: BaseException) -> bool:
    """typer.Exit / click's Exit (`--help`, `--version`, explicit exits), from any copy."""
    return "Exit" in _class_names(exc) and isinstance(getattr(exc, "exit_code", None), int)


def _os_error(exc: OSError) -> str:
    """'PATH: reason' of an OSError (both paths of a failed rename); a full disk as
    `no space left on DEVICE writing PATH`."""
    from .core.paths import NO_SPACE, write_error

    if exc.errno in NO_SPACE and exc.filename is not None:
        return str(write_error(exc, os.fsdecode(exc.filename)))
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


def _one_line(exc: SlimpError) -> str:
    """The message of a SlimpError; one raised in a DataLoader worker comes back wrapped in
    torch's "Caught SlimpError in DataLoader worker process 0. Original Traceback ...": its
    own last line is the message."""
    text = str(exc)
    if "\n" in text and text.startswith("Caught "):
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 0 on success, 1 with one line for a user error, 2 with the
    usage message for bad usage, 130 when interrupted (at any moment: a Ctrl-C that a
    finaliser swallowed still ends the command as interrupted); never a traceback for those."""
    install_interrupt_handler()
    try:
        raise_if_interrupted()  # a Ctrl-C during the imports, swallowed there
        # Non-standalone mode returns (not raises) the code of typer.Exit / ctx.exit.
        rc = app(args=argv, prog_name="slimp", standalone_mode=False)
        raise_if_interrupted()
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(130)
    except SlimpError as exc:
        if interrupted():
            _exit_interrupted()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        _exit_interrupted()
    except OSError as exc:
        if interrupted():  # e.g. a worker process that the same Ctrl-C stopped first
            _exit_interrupted()
        # A file the user named cannot be read or written (permissions, a file where a
        # folder should be, a full disk): the library names most of these itself; this is
        # the last line of defence, so the user still reads one line, never a traceback.
        print(f"error: {_os_error(exc)}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if _is_exit(exc):
            sys.exit(exc.exit_code)
        if interrupted():  # "DataLoader worker exited unexpectedly" after the same Ctrl-C
            _exit_interrupted()
        if _is_abort(exc):
            _exit_interrupted()
        if _is_usage_error(exc):
            exc.show()
            sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
        raise
    finally:
        from .core.paths import release_outputs

        release_outputs()
        if argv is None:  # the `slimp` process itself: a Ctrl-C while it shuts down is 130 too
            _late_interrupts()
    sys.exit(rc if isinstance(rc, int) else 0)


def _late_interrupts() -> None:
    """From here on a SIGINT ends the process at once with one line and 130: during Python's
    shutdown (atexit, finalisers) a KeyboardInterrupt would be printed with a traceback."""
    import signal
    import threading

    def now(signum, frame) -> None:
        os.write(2, b"interrupted\n")
        os._exit(130)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, now)


if __name__ == "__main__":
    main()
