"""Options several commands declare alike, declared once, and the plumbing that turns them
into library arguments.

- `with_options(...)`: a decorator that gives a command function a table of shared
  parameters (Typer reads the function's signature), so two commands that take the same
  options (pretrain and adapt) list them once; the command receives them as `**options`.
- the option declarations repeated across commands (`--device`, the `RUN` argument of the
  run-reading commands, `--json`/`--plots`, the deprecated `--img-size`), and
  `resolve_input_size(...)`, which resolves `--img-size` against `--input-size`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

from .choices import DEVICE_HELP, device_name


@dataclass(frozen=True, kw_only=True)
class Shared:
    """One option several commands take: its parameter name, its Annotated type (the Typer
    Option inside), its default and which commands take it (None = every one)."""

    name: str
    annotation: Any
    default: Any = None
    commands: tuple[str, ...] | None = None

    def parameter(self) -> inspect.Parameter:
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=self.default,
            annotation=self.annotation,
        )


def with_options(
    command: str,
    *,
    after: str,
    options: Sequence[Shared],
    tail: Sequence[Shared] = (),
) -> Callable:
    """Decorate a command function `fn(own..., **options)`: Typer sees `options` (those of
    `command`) right after the parameter `after`, and `tail` after all of `fn`'s own, in the
    tables' order (which is the order of --help within each panel). `fn` receives the shared
    values in `**options`."""

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        if len(own) == len(sig.parameters) or after not in sig.parameters:
            raise TypeError(f"{fn.__name__}: needs **options and a parameter {after!r}")
        shared = [o.parameter() for o in options if o.commands is None or command in o.commands]
        at = [p.name for p in own].index(after) + 1
        # keyword-only: the shared options carry defaults, the own ones before them may not
        own = [p.replace(kind=p.KEYWORD_ONLY) for p in own]
        params = [*own[:at], *shared, *own[at:], *(o.parameter() for o in tail)]
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise TypeError(f"{fn.__name__}: a shared option repeats one of its own")
        fn.__signature__ = sig.replace(parameters=params)
        return fn

    return decorate


def given(**options) -> dict:
    """The options the user gave (None = left out)."""
    return {k: v for k, v in options.items() if v is not None}


def device_option(default: str | None, help: str = DEVICE_HELP, **kwargs):
    """`--device`: free text checked by `choices.device_name` (exit 2 on no device name)."""
    return typer.Option(default, "--device", help=help, callback=device_name, **kwargs)


def run_argument():
    """The RUN argument of the commands that read a finished run."""
    return typer.Argument(
        ..., metavar="RUN", help="Run dir of slimp pretrain/adapt, or a checkpoint file in it."
    )


def flag(name: str, help: str):
    """An on/off option, off by default."""
    return typer.Option(False, name, help=help)


VERIFY_HELP = "Check every shard's sha256 against manifest.json first."


def files_option(name: str, help: str, metavar: str = "FILE"):
    """A repeatable option of files (`--metrics A --metrics B`); None when not given."""
    return typer.Option(None, name, metavar=metavar, help=help)


def json_option():
    """`--json FILE` of probe and retrieve."""
    return typer.Option(None, "--json", help="Write the results as JSON here.")


def img_size_option():
    """The hidden, deprecated name of `--input-size` (`resolve_input_size` resolves the two)."""
    return typer.Option(
        None, "--img-size", min=1, hidden=True, help="Deprecated name of --input-size."
    )


def resolve_input_size(
    input_size: int | None, img_size: int | None, console: Console
) -> int | None:
    """`--input-size`, or the deprecated `--img-size` (with a notice); both and different is
    bad usage (exit 2)."""
    if img_size is None:
        return input_size
    if input_size is not None and input_size != img_size:
        raise typer.BadParameter(
            f"--img-size {img_size} (the deprecated name) contradicts --input-size "
            f"{input_size}; give --input-size alone"
        )
    console.print("notice: --img-size is deprecated; use --input-size", highlight=False)
    return img_size
