"""The import direction of docs/internals.md: each layer imports only itself and layers below.

A failure names the module and the upward import, e.g. "slimp_cli.embed imports
slimp_cli.train.data (layer train is above layer pipelines)".
"""

from __future__ import annotations

import ast
from pathlib import Path

import slimp_cli

PACKAGE = Path(slimp_cli.__file__).parent

# Top to bottom, as drawn in docs/internals.md.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("slimp_cli.cli", "slimp_cli.commands")),
    ("app", ("slimp_cli.demo", "slimp_cli.report")),
    ("train", ("slimp_cli.train",)),
    (
        "pipelines",
        (
            "slimp_cli.ingest",
            "slimp_cli.embed",
            "slimp_cli.embed_stream",
            "slimp_cli.foreign",
            "slimp_cli.eval",
            "slimp_cli.export",
            "slimp_cli.encode",
        ),
    ),
    ("runs", ("slimp_cli.runs", "slimp_cli.holdout")),
    (
        "maths",
        (
            "slimp_cli.models",
            "slimp_cli.losses",
            "slimp_cli.losses_sm3",
            "slimp_cli.transforms",
            "slimp_cli.resize",
            "slimp_cli.decode",
            "slimp_cli.model_config",
        ),
    ),
    ("contracts", ("slimp_cli.schema", "slimp_cli.shards", "slimp_cli.stream", "slimp_cli.store")),
    ("base", ("slimp_cli.errors", "slimp_cli.paths", "slimp_cli.devices", "slimp_cli")),
]


def layer_of(module: str) -> int:
    """Index of the layer owning `module` (the longest matching prefix wins)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} belongs to no layer of docs/internals.md; add it there"
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[str]:
    """Every slimp_cli module `path` imports, at the top or lazily inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "slimp_cli"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "slimp_cli":
                continue
            # `from . import plots` names a module: count the sub-module, not the package
            for a in node.names:
                sub = f"{target}.{a.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                is_package = (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                out.append(sub if (is_module or is_package) else target)
    return out


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        mine = layer_of(name)
        for target in imports_of(path):
            theirs = layer_of(target)
            if theirs < mine:
                problems.append(
                    f"{name} imports {target} (layer {LAYERS[theirs][0]} is above layer "
                    f"{LAYERS[mine][0]})"
                )
    return problems


def test_imports_point_down_the_layers():
    assert upward_imports() == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    # A module of the contracts layer that imports training must be reported.
    fake = PACKAGE / "store.py"
    source = fake.read_text()
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: (
            source + "\nfrom .train import pretrain\n" if self == fake else Path.open(self).read()
        ),
    )
    assert any("slimp_cli.store imports slimp_cli.train" in p for p in upward_imports())


def test_nothing_outside_train_and_the_cli_imports_train():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if layer_of(name) <= 2:  # cli, app (the demo drives training), train itself
            continue
        assert not [t for t in imports_of(path) if t.startswith("slimp_cli.train")], name
