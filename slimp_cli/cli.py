"""The `slimp` command line: a thin Typer app over the library.

Each area registers its sub-commands from `slimp_cli/commands/<area>.py`. User errors
(`SlimpError`) become one line on stderr and exit status 1; bad usage exits 2 (Typer).
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
        "Pipeline: ingest -> pretrain/adapt -> embed -> probe | retrieve | extrapolate. "
        "Try `slimp demo` for the whole pipeline on a generated cohort."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    from .commands import embed as embed_cmds
    from .commands import eval as eval_cmds
    from .commands import explain as explain_cmds
    from .commands import ingest as ingest_cmds
    from .commands import train as train_cmds

    ingest_cmds.register(app)
    train_cmds.register(app)
    embed_cmds.register(app)
    eval_cmds.register(app)
    explain_cmds.register(app)


_register_all()


def _is_usage_error(exc: BaseException) -> bool:
    """A click usage/parameter error, whichever click raised it (Typer >= 0.20 vendors its own
    copy, so an isinstance check against the `click` package would miss it)."""
    return hasattr(exc, "exit_code") and callable(getattr(exc, "show", None))


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
    except typer.Exit as exc:  # --help and explicit exits
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if _is_usage_error(exc):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
