"""docs/cli.md against --help: every option of every command is named in that command's
section, and the help renders cleanly (no `%%`, no `<list[Path]>`, metavars in capitals).

When an option is added without docs, the failure lists exactly what is missing, command by
command, so the docs can be brought up to date in one pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from slimp_cli.cli import app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
# adapt takes pretrain's training options; its section says so and names only its own
INHERITS = {"adapt": "pretrain"}


def commands() -> dict[str, object]:
    """Every leaf command by its path ("ingest", "schema infer"), as click objects."""
    root = typer.main.get_command(app)
    out = {}

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(root, [])
    return out


def options_of(cmd) -> list[str]:
    """The long name of each visible option (`--augment` of `--augment/--no-augment`)."""
    names = []
    for p in cmd.params:
        if getattr(p, "param_type_name", "") != "option" or getattr(p, "hidden", False):
            continue
        longs = [o for o in p.opts if o.startswith("--")] or list(p.opts)
        if longs[0] != "--help":
            names.append(longs[0])
    return names


def sections(text: str) -> list[tuple[str, str]]:
    """(header, body) of each `## ` section."""
    parts = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    return [(p.split("\n", 1)[0], p) for p in parts]


def documented(text: str, command: str, option: str) -> bool:
    """`option` named in a section about `command` or in a section about no one command
    (conventions shared by all, `--shard-url`)."""
    for header, body in sections(text):
        named = re.findall(r"`slimp ([a-z]+(?: [a-z]+)?)", header)
        mine = any(command == n or command.startswith(n + " ") or n == command for n in named)
        if (mine or not named) and re.search(re.escape(option) + r"(?![\w-])", body):
            return True
    return False


def missing_docs(text: str) -> dict[str, list[str]]:
    out = {}
    for path, cmd in commands().items():
        gaps = []
        for opt in options_of(cmd):
            if documented(text, path, opt):
                continue
            parent = INHERITS.get(path)
            if parent and opt in options_of(commands()[parent]) and documented(text, parent, opt):
                continue
            gaps.append(opt)
        if gaps:
            out[path] = gaps
    return out


def test_every_command_has_a_section():
    text = DOCS.read_text()
    headers = [h for h, _ in sections(text)]
    lacking = [c for c in commands() if not any(f"`slimp {c}" in h for h in headers)]
    assert not lacking, f"docs/cli.md has no `## slimp COMMAND` section for: {', '.join(lacking)}"


def test_every_option_in_help_is_in_docs():
    gaps = missing_docs(DOCS.read_text())
    lines = [f"  slimp {c}: {', '.join(opts)}" for c, opts in gaps.items()]
    assert not gaps, "options in --help but not in their docs/cli.md section:\n" + "\n".join(lines)


def test_the_docs_check_finds_a_missing_option():
    """The check above can fail: take one option's mentions out of the docs."""
    text = DOCS.read_text()
    assert "--knn-temperature" in text
    gaps = missing_docs(text.replace("--knn-temperature", "--knn-temp"))
    assert gaps == {"probe": ["--knn-temperature"]}


@pytest.mark.parametrize("path", sorted(commands()))
def test_help_renders_cleanly(path, run_cli):
    res = run_cli(*path.split(), "--help")
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "%%" not in text and "<list[" not in text, text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    args = re.findall(r"[{\[]([A-Za-z_.]+)[}\]]", usage.split("[OPTIONS]", 1)[-1])
    assert all(a.isupper() for a in args), usage  # metavars, not parameter names
