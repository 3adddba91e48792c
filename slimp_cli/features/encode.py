"""`slimp encode RUN --image x.jpg [--meta row.json]`: one lesion's vectors, without shards.

The same computation as one row of `slimp embed`: the image goes through the run's own
preprocessing (`Run.preprocess`: resize + centre-crop to the model's input size, its mean/std)
and the metadata through the model's own inputs (`model.inputs`: which fields feed which
encoder, with the vocabularies and statistics of the data it was trained on).

`row.json` is one JSON object of field name -> raw value as in the dataset's table (numbers,
true/false, category names; strings such as "3,5", "yes" or "" are typed as `slimp ingest`
types table cells). For a patient-level model include the derived field `n_lesions` (the
patient's number of lesions), as ingest derives it. Fields the model does not use are listed as
`ignored`, fields it uses but the row lacks as `missing` (encoded as missing values), values
outside a field's vocabulary as `unknown` (encoded as missing, as `embed` does).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.devices import resolve_device
from ..core.errors import SlimpError
from ..core.paths import read_json
from ..data.schema import category_key, is_categorical
from ..ingest.values import Unparseable, parse_cell
from ..models.runs import Run, load_run


def read_meta(path: str | Path) -> dict:
    """A `--meta` file: one JSON object of field -> value."""
    path = Path(path)
    if not path.is_file():
        raise SlimpError(f"--meta {path}: no such file")
    row = read_json(path)
    if not isinstance(row, dict):
        raise SlimpError(f"--meta {path}: need one JSON object of field -> value")
    return row


def type_row(row: dict, features: list[dict], *, where: str = "--meta") -> dict:
    """The values of `row` typed by each feature's type (as ingest types table cells)."""
    out = {}
    for f in features:
        name, kind = f["name"], f["type"]
        value = row.get(name)
        if value is None:
            out[name] = None
            continue
        if isinstance(value, (dict, list)):
            raise SlimpError(f"{where}: field '{name}' must be a single value, got {value!r}")
        if kind == "numerical" and isinstance(value, bool):
            raise SlimpError(f"{where}: field '{name}' is numerical, got {value!r}")
        if kind == "boolean" and isinstance(value, bool):
            out[name] = value
            continue
        cell = (
            value
            if isinstance(value, str)
            else repr(value)
            if isinstance(value, float)
            else str(value)
        )
        try:
            out[name] = parse_cell(cell, kind)
        except Unparseable:
            raise SlimpError(f"{where}: field '{name}' is {kind}, got {value!r}") from None
    return out


def encode_lesion(
    run: str | Path | Run,
    image: str | Path,
    meta: dict | None = None,
    *,
    device: str = "cpu",
) -> dict:
    """The vectors of one lesion: `{"image": [...], "lesion": [...], "patient": [...]}` (the
    levels the model produces; image alone without `meta`), plus `levels`, `missing`,
    `ignored`, `unknown` and `checkpoint_sha256`."""
    dev = resolve_device(device)
    if not isinstance(run, Run):
        run = load_run(run, device=dev)
    model, inputs = run.model, run.model.inputs
    image = Path(image)
    if not image.is_file():
        raise SlimpError(f"--image {image}: no such file")
    levels = inputs.levels if meta is not None else ("image",)
    features = [*(inputs.lesion_features or []), *(inputs.patient_features or [])]
    used = {f["name"]: f for f in features}
    result: dict = {"levels": list(levels)}
    row = {}
    if meta is not None:
        row = type_row(meta, list(used.values()))
        result["missing"] = sorted(n for n in used if meta.get(n) is None)
        result["ignored"] = sorted(set(meta) - set(used))
        result["unknown"] = sorted(
            n
            for n, v in row.items()
            if v is not None
            and is_categorical(used[n])
            and category_key(v) not in set(used[n]["vocab"])
        )
    pixels = run.preprocess.load(image.read_bytes(), where=str(image)).unsqueeze(0)
    use_amp = dev.type == "cuda"  # as embed: bf16 autocast on CUDA, fp32 elsewhere
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
        vectors = {"image": model.encode_image(pixels.to(dev))}
        if "lesion" in levels:
            vectors["lesion"] = model.encode_lesion(inputs.lesion_tab([row], [row]).to(dev))
        if "patient" in levels:
            vectors["patient"] = model.encode_patient(inputs.patient_tab([row]).to(dev))
    for k, v in vectors.items():
        result[k] = [float(x) for x in v.float().cpu()[0]]
    result["checkpoint_sha256"] = run.sha256
    return result
