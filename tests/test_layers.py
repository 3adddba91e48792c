"""The import direction of docs/internals.md: each layer imports only itself and layers below.

A failure names the module and the upward import, e.g. "slimp_cli.features.embed imports
slimp_cli.train.data (layer train is above layer pipelines)".
"""

from __future__ import annotations

import ast
from pathlib import Path

import slimp_cli

PACKAGE = Path(slimp_cli.__file__).parent

# Top to bottom, as drawn in docs/internals.md: the pipeline read upwards.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("slimp_cli.cli", "slimp_cli.commands")),
    ("app", ("slimp_cli.app",)),
    ("eval", ("slimp_cli.eval",)),
    ("features", ("slimp_cli.features",)),
    ("train", ("slimp_cli.train",)),
    ("models", ("slimp_cli.models", "slimp_cli.losses")),
    ("ingest", ("slimp_cli.ingest",)),
    ("data", ("slimp_cli.data",)),
    ("core", ("slimp_cli.core", "slimp_cli")),
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


def add_import(monkeypatch, module: Path, line: str) -> None:
    """Make the checks read `module` with one more import line at its end."""
    source = module.read_text()
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: source + f"\n{line}\n" if self == module else Path.open(self).read(),
    )


def test_the_check_catches_an_upward_import(monkeypatch):
    # A module of the data layer that imports training must be reported.
    add_import(monkeypatch, PACKAGE / "data" / "shards.py", "from ..train import pretrain")
    assert any("slimp_cli.data.shards imports slimp_cli.train" in p for p in upward_imports())


def test_nothing_outside_train_and_the_cli_imports_train():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if LAYERS[layer_of(name)][0] in ("cli", "app") or name.startswith("slimp_cli.train"):
            continue  # the CLI, the demo (it drives training) and train itself
        assert not [t for t in imports_of(path) if t.startswith("slimp_cli.train")], name


def import_cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph (top-level and
    lazy imports; a package's own `__init__` counts as a module)."""
    graph = {module_name(p): set(imports_of(p)) for p in sorted(PACKAGE.rglob("*.py"))}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    assert import_cycles() == []


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    # embed_streamed importing embed back (the cycle this layout removed) must be found.
    add_import(monkeypatch, PACKAGE / "features" / "embed_streamed.py", "from .embed import embed")
    assert ["slimp_cli.features.embed", "slimp_cli.features.embed_streamed"] in import_cycles()


def test_every_package_says_what_it_owns():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{module_name(init)} has no docstring saying what it owns"
