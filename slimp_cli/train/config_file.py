"""`pretrain --config FILE` / `adapt --config FILE`: the options of a run read from a file.

FILE is one of
- a hand-written `.json`, `.yaml` or `.yml` mapping whose keys are the commands' own option
  names, as on the command line without the dashes: `patients_per_batch: 8` or
  `patients-per-batch: 8`, `input_size`, `lr`, `report_to` (a list or a comma string). It may
  also group them in `model:` and `train:` sections, as a saved config.json does;
- a saved run's `config.json` (or the run dir holding it): its `model` and `train` sections
  (and for `adapt`, its `tune`).

Each key is checked against the options of the command before anything runs: an unknown key is
one line naming it and the closest valid name (difflib), a value of the wrong type one line
naming the key. What the range checks of `ModelConfig` / `TrainConfig` refuse (a negative lr,
an unknown precision) they still refuse, naming the option. Options given on the command line
override the file (the command merges `{**file, **given}`); the resolved options land in the
new run's config.json as any others do.

YAML is read with PyYAML (`yaml.safe_load`), which timm already requires; without it a YAML
file is a one-line error naming the package.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import SlimpError
from ..models.config import ModelConfig
from .train_config import TrainConfig

SUFFIXES = (".json", ".yaml", ".yml")
COMMANDS = ("pretrain", "adapt")
# Option name -> the config field it sets, where the two differ.
ALIASES = {"input_size": "img_size"}
# Options that say where to read and write, not how to train: given on the command line.
COMMAND_LINE_ONLY = frozenset(
    {"data", "out", "o", "checkpoint", "config", "resume", "progress", "verify", "shard_url"}
)
TUNES = ("embeddings", "all")


@dataclass(frozen=True, kw_only=True)
class ConfigFile:
    """The options a `--config` file gives: `model` (ModelConfig fields; empty for adapt),
    `train` (TrainConfig fields) and `tune` (adapt; None when not given)."""

    path: Path
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    tune: str | None = None


def read_config_file(path: str | Path, *, command: str) -> ConfigFile:
    """The options in `path` for `command` ("pretrain" or "adapt"); SlimpError (one line,
    starting `--config PATH:`) on a missing or unreadable file, an unknown key, a wrong type.

    Examples:
        >>> import json, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.json"
        >>> _ = p.write_text(json.dumps({"patients-per-batch": 8, "input_size": 32}))
        >>> cfg = read_config_file(p, command="pretrain")
        >>> cfg.model, cfg.train
        ({'img_size': 32}, {'patients_per_batch': 8})
    """
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    path = Path(path)
    if path.is_dir():
        from ..models.runs import CONFIG

        path = path / CONFIG
    where = f"--config {path}"
    if not path.is_file():
        raise SlimpError(f"{where}: no such file (a .json or .yaml file, or a run's config.json)")
    data = _load(path, where)
    if not isinstance(data, dict):
        raise SlimpError(
            f"{where}: holds a {type(data).__name__}; give a mapping of option names to values"
        )
    from ..models.runs import RUN_FORMAT

    if "format" in data:  # a config.json written by slimp: take its recipe as saved
        if data["format"] != RUN_FORMAT:
            raise SlimpError(f"{where}: not a slimp run config (format '{RUN_FORMAT}')")
        from .records import recipe_from_config

        model, train = recipe_from_config(path)
        if command == "adapt":  # the model is CHECKPOINT's
            tune = data.get("tune")
            return ConfigFile(path=path, train=train, tune=tune if tune in TUNES else None)
        return ConfigFile(path=path, model=model, train=train)
    return _hand_written(data, path=path, where=where, command=command)


def _load(path: Path, where: str):
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SlimpError(f"{where}: give a .json, .yaml or .yml file (got '{suffix or path.name}')")
    if suffix == ".json":
        from ..core.paths import read_json

        try:
            return read_json(path)
        except SlimpError as exc:
            raise SlimpError(f"--config {exc}") from None
    try:
        import yaml
    except ImportError:
        raise SlimpError(
            f"{where}: reading YAML needs PyYAML (pip install pyyaml), or give a .json file"
        ) from None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SlimpError(
            f"{where}: cannot read ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SlimpError(f"{where}: not valid YAML ({problem}{line})") from None


def _options(command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """({option name: type} of the model options, same of the train options) of `command`."""
    train = typing.get_type_hints(TrainConfig)
    train = {f.name: train[f.name] for f in dataclasses.fields(TrainConfig)}
    if command == "adapt":
        return {}, {**train, "tune": str}
    hints = typing.get_type_hints(ModelConfig)
    model = {f.name: hints[f.name] for f in dataclasses.fields(ModelConfig)}
    model.update({alias: model[name] for alias, name in ALIASES.items()})
    return model, train


def _key(raw) -> str:
    return str(raw).strip().lstrip("-").replace("-", "_")


def _hand_written(data: dict, *, path: Path, where: str, command: str) -> ConfigFile:
    flat: dict[str, tuple[str, Any]] = {}  # option name -> (key as written, value)
    for section in ("model", "train"):
        if isinstance(data.get(section), dict):  # a config.json's layout, hand-written
            for raw, value in data[section].items():
                flat.setdefault(_key(raw), (f"{section}.{raw}", value))
    for raw, value in data.items():
        if raw in ("model", "train") and isinstance(value, dict):
            continue
        key = _key(raw)
        if key in flat:
            raise SlimpError(f"{where}: '{raw}' is given twice ('{flat[key][0]}' too)")
        flat[key] = (str(raw), value)
    model_opts, train_opts = _options(command)
    known = {**model_opts, **train_opts}
    other = ModelConfig if command == "adapt" else None
    problems = []
    for key, (raw, _) in flat.items():
        if key in known:
            continue
        if key in COMMAND_LINE_ONLY:
            problems.append(f"'{raw}' is given on the command line, not in a config file")
        elif other is not None and key in {f.name for f in dataclasses.fields(other)} | {*ALIASES}:
            problems.append(f"'{raw}' is a model option: adapt's model is CHECKPOINT's")
        elif command == "pretrain" and key == "tune":
            problems.append("'tune' is an option of adapt")
        else:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown key '{raw}'{hint}")
    if problems:
        raise SlimpError(f"{where}: " + "; ".join(problems))
    model, train, tune = {}, {}, None
    for key, (raw, value) in flat.items():
        value = _typed(value, known[key], raw=raw, where=where)
        if key == "tune":
            if value not in TUNES:
                raise SlimpError(f"{where}: 'tune' must be embeddings or all, got {value!r}")
            tune = value
        elif key in model_opts:
            model[ALIASES.get(key, key)] = value
        else:
            train[key] = value
    if "img_size" in model and sum(k in flat for k in ("img_size", "input_size")) > 1:
        raise SlimpError(f"{where}: give input_size once (img_size is its deprecated name)")
    return ConfigFile(path=path, model=model, train=train, tune=tune)


def _typed(value, hint, *, raw: str, where: str):
    """`value` checked against the field's type `hint` (int, float, bool, str, their unions,
    `X | None`); report_to also takes a list. SlimpError naming the key otherwise."""
    args = typing.get_args(hint)
    optional = type(None) in args
    bases = [a for a in args if a is not type(None)] or [hint]
    if value is None:
        if optional:
            return None
        raise SlimpError(f"{where}: '{raw}' needs a value ({_kinds(bases)}), got null")
    if _key(raw).endswith("report_to") and isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return ",".join(value) or "none"
    for base in bases:  # `float | str` (holdout): a number first, else the string
        ok, checked = _check(value, base)
        if ok:
            return checked
    raise SlimpError(f"{where}: '{raw}' must be {_kinds(bases)}, got {value!r}")


def _check(value, base) -> tuple[bool, Any]:
    """(whether `value` is of type `base`, the value converted)."""
    if base is bool:
        return isinstance(value, bool), value
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if base is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return False, value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        return ok, float(value) if ok else value
    return isinstance(value, str), value


def _kinds(bases) -> str:
    return " or ".join(_kind(b) for b in bases)


def _kind(base) -> str:
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
    }.get(base, "a string")
