"""The closed sets of option values, as Typer choices (shown in --help, exit 2 on a bad value).

The values are spelled here rather than imported, so that `slimp --help` does not import
torch or scikit-learn; `tests/test_cli_contract.py` checks that each set equals the library's
own constant (`models.config.VARIANTS`, `eval.probe.LABELS`, ...), so they cannot drift apart.
"""

from __future__ import annotations

from enum import Enum

import typer


def _choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum whose members are `values` (what Typer turns into a choice)."""
    return Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


VARIANTS = ("nested", "flat", "image", "sm3")  # models.config.VARIANTS
METHODS = ("slimp", "sm3")  # train.train_config.METHODS
TUNES = ("embeddings", "all")  # train.adapt.TUNES
LABELS = ("binary", "multiclass", "melanoma")  # eval.probe.LABELS
SPLITS = ("holdout", "random", "patient", "official")  # eval.splits.SPLITS
RETRIEVE_SPLITS = ("holdout", "all", "random", "patient", "official")  # retrieve adds "all"
STRATEGIES = ("ilp", "il", "ii")  # store.PSEUDO_STRATEGIES
TASKS = ("classification", "derm7pt-multilabel")  # probe_cmd's tasks
PROBE_METHODS = ("linear", "knn")  # eval.probe.METHODS (a comma list)
CLASSIFIERS = ("logreg", "linear")  # eval.probe.CLASSIFIERS
PROBE_RECIPES = ("slimp", "sm3")  # eval.linear.RECIPES
LEVELS = ("image", "lesion", "patient", "derm", "clinic", "derm_mm", "clinic_mm", "labels")
# ^ store.LEVELS (a comma list; the last five are SM3 stores' branch features)
REPORT_TO = ("none", "tensorboard", "wandb")  # train.report.REPORTERS (a comma list)
DECODES = ("cpu", "gpu")  # decode.DECODES

Variant = _choice("Variant", VARIANTS)
Method = _choice("Method", METHODS)
Tune = _choice("Tune", TUNES)
Label = _choice("Label", LABELS)
Split = _choice("Split", SPLITS)
RetrieveSplit = _choice("RetrieveSplit", RETRIEVE_SPLITS)
Strategy = _choice("Strategy", STRATEGIES)
Task = _choice("Task", TASKS)
Classifier = _choice("Classifier", CLASSIFIERS)
ProbeRecipe = _choice("ProbeRecipe", PROBE_RECIPES)
Decode = _choice("Decode", DECODES)
DECODE_HELP = (
    "Where JPEGs are decoded: cpu (DataLoader workers, PIL) or gpu (the batch's bytes "
    "decoded, resized and cropped on the CUDA device with nvJPEG; needs CUDA)."
)


def value(choice):
    """The plain string of a choice (None stays None)."""
    return choice.value if isinstance(choice, Enum) else choice


def comma_list(allowed: tuple[str, ...]):
    """A Typer callback for a comma-separated subset of `allowed` (exit 2 on another value)."""

    def check(text: str | None) -> str | None:
        if text is None:
            return None
        bad = [t.strip() for t in text.split(",") if t.strip() and t.strip() not in allowed]
        if bad:
            raise typer.BadParameter(f"{', '.join(bad)}: choose from {','.join(allowed)}")
        return text

    return check


def device_name(name: str | None) -> str | None:
    """A Typer callback: `--device` is free text checked by `slimp_cli.core.devices` (exit 2 when
    it is no device name; whether the device exists here is checked when it is used)."""
    if name is None:
        return None
    from ..core.devices import check_device_name
    from ..core.errors import SlimpError

    try:
        check_device_name(name)
    except SlimpError as exc:
        raise typer.BadParameter(str(exc)) from None
    return name


DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:N or mps."
WORKERS_HELP = (
    "Worker processes decoding images (0 = none: the main process decodes). Results do not "
    "depend on it."
)


def shard_url(template: str | None) -> str | None:
    """A Typer callback: `--shard-url` must name the shard with `{name}` (exit 2 otherwise)."""
    if template is None:
        return None
    if "{name}" not in template:
        raise typer.BadParameter(
            f"{template!r} has no {{name}}: give a template in which {{name}} becomes each "
            "shard's file name, e.g. 'pipe:aws s3 cp s3://bucket/pad/{name} -'"
        )
    return template


SHARD_URL_HELP = (
    "Stream the shards instead of reading DATA's tar files: a URL template that webdataset "
    "opens, {name} = each shard's file name in DATA/manifest.json ('pipe:aws s3 cp "
    "s3://bucket/pad/{name} -', 'https://host/pad/{name}', '/mnt/other/{name}'). DATA keeps "
    "manifest.json and schema.json (and index.json: the patients without their images)."
)
