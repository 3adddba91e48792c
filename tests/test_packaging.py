"""Packaging: what the package imports is declared, the built-in schemas ship as package data
(CI also installs the built wheel in a fresh venv and ingests with it: `make wheel-check`)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import slimp_cli
from slimp_cli.data.schema import builtin_schema_names, load_dataset_schema

ROOT = Path(slimp_cli.__file__).resolve().parent.parent
PACKAGE = ROOT / "slimp_cli"
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _third_party_imports() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "slimp_cli"}


def test_every_imported_package_is_declared():
    project = _pyproject()["project"]
    # a required dependency, or an optional extra's (imported lazily, e.g. wandb); not dev's
    extras = [d for k, v in project["optional-dependencies"].items() if k != "dev" for d in v]
    declared = {re.split(r"[<>=!~\[ ;]", d)[0].lower() for d in project["dependencies"] + extras}
    imported = {DISTRIBUTIONS.get(n, n).lower() for n in _third_party_imports()}
    assert imported, "found no imports"
    assert imported <= declared, f"imported but not declared: {sorted(imported - declared)}"


def test_builtin_schemas_are_package_data():
    assert _pyproject()["tool"]["setuptools"]["package-data"]["slimp_cli"] == ["schemas/*.json"]
    files = sorted(p.stem for p in (PACKAGE / "schemas").glob("*.json"))
    assert builtin_schema_names() == [n for n in files if n != "dataset.schema"]
    assert {"pad-ufes-20", "slice-3d", "derm7pt", "ham10000", "ph2", "hiba"} <= set(files)
    for name in builtin_schema_names():
        assert load_dataset_schema(name)["name"]  # each validates against the meta-schema


def test_version_has_one_source():
    project = _pyproject()
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "slimp_cli.__version__"}
