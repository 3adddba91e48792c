"""The `slimp` command line: a thin Typer app over the library.

Each area registers its sub-commands from `slimp_cli/commands/<area>.py`. Exit status: 0 on
success; 1 with one line `error: ...` on stderr for a user error (`SlimpError`); 2 with Typer's
usage message for bad usage (unknown option or command, missing argument, a value of the wrong
type or outside its choices); 130 when interrupted. Never a traceback for any of those.
"""

from __future__ import annotations

import sys

import typer

from .errors import SlimpError, TrainingInterrupted

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


_register_all()


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
    """'PATH: reason' of an OSError (both paths of a failed rename)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 0 on success, 1 with one line for a user error, 2 with the
    usage message for bad usage, 130 when interrupted; never a traceback for those."""
    try:
        # Non-standalone mode returns (not raises) the code of typer.Exit / ctx.exit.
        rc = app(args=argv, prog_name="slimp", standalone_mode=False)
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(130)
    except SlimpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        # A file the user named cannot be read or written (permissions, a file where a
        # folder should be, a full disk): the library names most of these itself; this is
        # the last line of defence, so the user still reads one line, never a traceback.
        print(f"error: {_os_error(exc)}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if _is_exit(exc):
            sys.exit(exc.exit_code)
        if _is_abort(exc):
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        if _is_usage_error(exc):
            exc.show()
            sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
