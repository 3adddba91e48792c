"""`slimp export RUN DIR`: a trained model in files that other tools read, with a model card.

DIR receives:
- `model.safetensors` + `config.json`: the image encoder as a plain timm model (pooled features,
  `num_classes=0`): `timm.create_model("local-dir:DIR", pretrained=True)` (recent timm; tested with 1.0.31), or
  on older timm `timm.create_model(architecture, pretrained=True, num_classes=0,
  pretrained_cfg_overlay=dict(file="DIR/model.safetensors"), **model_args)`. `config.json`
  holds the timm architecture, `model_args` (the input size; for slimp's local test ViTs, which
  are no timm registry names, the layer sizes over a registered ViT of the same family) and
  `pretrained_cfg` (input size, mean/std the model was trained with, bicubic resize + centre
  crop).
- `slimp_heads.safetensors`: every other tensor of the SLIMP model: the image projection into
  the shared space, the TRACE lesion/patient encoders and their projections, the phenotype
  layer (image variant: the SimCLR projection head). Keys are the model's own parameter names.
- `slimp_config.json`: the run's config.json (model, resolved schema with vocabularies and
  statistics, preprocessing, recipe, environment): what rebuilds the tabular encoders.
- `README.md`: the model card in the hub's format: YAML front matter (license, library_name,
  pipeline_tag, tags, datasets, metrics) between `---` lines, then data and schema, recipe,
  measured metrics with their split (the training loss and the per-epoch held-out validation
  loss of metrics.jsonl, the `--metrics` probe reports), intended use and limits.

The folder is written under a temporary name beside DIR and renamed when complete; with
`--overwrite` it is swapped with the existing DIR, which stays whole until then. One export per
DIR at a time; a full disk is one line (`paths.AtomicOutput`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..core.errors import SlimpError
from ..core.paths import AtomicOutput, json_safe, output_lock, read_json
from ..models.image import LOCAL_MODELS
from ..models.runs import METRICS, Run, load_run, read_metrics

IMAGE_WEIGHTS = "model.safetensors"
TIMM_CONFIG = "config.json"
HEADS = "slimp_heads.safetensors"
SLIMP_CONFIG = "slimp_config.json"
MODEL_CARD = "README.md"
# slimp's local test ViTs are timm VisionTransformers: exported as this registered name with
# their layer sizes in model_args.
LOCAL_ARCHITECTURE = "vit_tiny_patch16_224"
PAPER = "https://arxiv.org/abs/2505.23709"


@dataclass
class Exported:
    """What `export_run` wrote."""

    out: Path
    architecture: str
    model_args: dict
    files: list[str]


def timm_spec(run: Run) -> tuple[str, dict]:
    """(timm architecture name, model_args) that rebuild the run's image encoder in timm."""
    cfg = run.model.config
    if cfg.image_model in LOCAL_MODELS:
        return LOCAL_ARCHITECTURE, {**LOCAL_MODELS[cfg.image_model], "img_size": cfg.img_size}
    return cfg.image_model, {"img_size": cfg.img_size}


def timm_config(run: Run) -> dict:
    """The timm `config.json` of the image encoder (read by `create_model("local-dir:...")`)."""
    arch, model_args = timm_spec(run)
    pre = run.preprocess
    size = int(pre.img_size)
    return {
        "architecture": arch,
        "num_classes": 0,
        "num_features": int(run.model.image_dim),
        "global_pool": getattr(run.model.image_encoder, "global_pool", "token"),
        "model_args": model_args,
        "pretrained_cfg": {
            "tag": "slimp",
            "custom_load": False,
            "input_size": [3, size, size],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(pre.mean),
            "std": list(pre.std),
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
        "slimp": {
            "version": __version__,
            "image_model": run.model.config.image_model,
            "variant": run.model.variant,
            "checkpoint_sha256": run.sha256,
        },
    }


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def export_run(
    run: str | Path | Run,
    out: str | Path,
    *,
    metrics_files: list[str | Path] = (),
    overwrite: bool = False,
) -> Exported:
    """Export the run (a run dir, a checkpoint file or a loaded `Run`) into the folder `out`.

    `metrics_files`: `slimp probe --json` reports of this model's features, quoted with their
    split in the model card. `out` must not exist (or be empty) unless `overwrite`.
    """
    out = Path(out)
    # One export per DIR at a time; the checks are repeated under its lock. The export is
    # written beside DIR and swapped in when complete (paths.AtomicOutput, folder=True): over
    # an existing export, the old one stays whole until the new one is.
    _check_out(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # the lock and the temporary go there
    except OSError as exc:
        raise SlimpError(f"{out}: cannot create its folder ({exc.strerror})") from None
    with output_lock(out):
        _check_out(out, overwrite)
        if not isinstance(run, Run):
            run = load_run(run, device="cpu")
        reports = [_read_report(Path(p)) for p in metrics_files]
        with AtomicOutput(
            out, overwrite=overwrite, folder=True, check=lambda: _check_out(out, overwrite)
        ) as tmp:
            image_state = _tensors(run.model.image_encoder.state_dict())
            _write_safetensors(tmp / IMAGE_WEIGHTS, image_state, {"format": "pt"})
            heads = {
                k: v
                for k, v in run.model.state_dict().items()
                if not k.startswith("image_encoder.")
            }
            _write_safetensors(
                tmp / HEADS,
                _tensors(heads),
                {"format": "pt", "slimp_variant": run.model.variant},
            )
            config = timm_config(run)
            (tmp / TIMM_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            (tmp / SLIMP_CONFIG).write_text(
                json.dumps(json_safe(run.config), indent=2, sort_keys=True) + "\n"
            )
            (tmp / MODEL_CARD).write_text(model_card(run, config, reports))
    files = sorted(p.name for p in out.iterdir())
    return Exported(out, config["architecture"], config["model_args"], files)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SlimpError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SlimpError(f"{out} is not empty; choose a new folder or add --overwrite")


def _write_safetensors(path: Path, tensors: dict, metadata: dict) -> None:
    """safetensors bytes written by Python: a full disk is an OSError naming its errno (the
    library's own file writer raises a SafetensorError with the reason in its text)."""
    from safetensors.torch import save

    with open(path, "wb") as fh:
        fh.write(save(tensors, metadata=metadata))


def _read_report(path: Path) -> dict:
    if not path.is_file():
        raise SlimpError(f"--metrics {path}: no such file (a `slimp probe --json` report)")
    report = read_json(path)
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise SlimpError(f"--metrics {path}: not a `slimp probe --json` report (no 'results')")
    return {"path": path, **report}


# --------------------------------------------------------------------------- the model card


def _fmt(metric) -> str:
    if not isinstance(metric, dict) or metric.get("mean") is None:
        return "n/a"
    if metric.get("std") is None:
        return f"{metric['mean']:.3f}"
    return f"{metric['mean']:.3f} ± {metric['std']:.3f}"


def _features_table(schema: dict) -> list[str]:
    rows = ["| level | feature | type | missing |", "|---|---|---|---|"]
    for level, key in (
        ("patient", "patient_features"),
        ("patient (derived)", "derived_patient_features"),
        ("lesion", "lesion_features"),
    ):
        for f in schema.get(key) or []:
            rate = f.get("missing_rate")
            miss = "-" if rate is None else f"{100 * rate:.0f}%"
            rows.append(f"| {level} | `{f['name']}` | {f['type']} | {miss} |")
    return rows if len(rows) > 2 else ["(no metadata features: an image-only model)"]


MAX_VALIDATION_ROWS = 20  # per-epoch held-out rows listed in the card (the last ones)


def _training_metrics(run: Run) -> list[str]:
    """The training loss of the last logging interval and the held-out validation rows."""
    found = (run.run_dir / METRICS).is_file()
    train_rows = [r for r in read_metrics(run.run_dir) if "loss" in r] if found else []
    val_rows = read_metrics(run.run_dir, kind="validation") if found else []
    out = []
    if train_rows:
        last = train_rows[-1]
        parts = ", ".join(
            f"{k} {v:.4f}"
            for k, v in last.items()
            if k.startswith("loss") and isinstance(v, (int, float))
        )
        out.append(
            f"- Training loss at step {last.get('step')} (epoch {last.get('epoch', 0) + 1}; "
            f"split: the training patients, mean over the last logging interval): {parts}."
        )
    if val_rows:
        out += _validation_table(val_rows)
    return out


def _validation_table(rows: list[dict]) -> list[str]:
    """The per-epoch held-out validation rows of metrics.jsonl as a Markdown table."""
    keys = [k for k in rows[-1] if k.startswith("val") and isinstance(rows[-1][k], (int, float))]
    best = min(rows, key=lambda r: r.get("val_loss", float("inf")))
    shown = rows[-MAX_VALIDATION_ROWS:]
    out = [
        f"- Held-out validation loss after each epoch (split: the patients of the run's "
        f"holdout.json, never trained on; {len(rows)} epoch(s)"
        + (f", the last {len(shown)} shown" if len(shown) < len(rows) else "")
        + f"); lowest val_loss {best.get('val_loss', float('nan')):.4f} after epoch "
        f"{best.get('epoch')}:",
        "",
        "| epoch | step | " + " | ".join(keys) + " |",
        "|---:|---:|" + "---:|" * len(keys),
    ]
    for r in shown:
        cells = [f"{r[k]:.4f}" if isinstance(r.get(k), (int, float)) else "-" for k in keys]
        out.append(f"| {r.get('epoch')} | {r.get('step')} | " + " | ".join(cells) + " |")
    return out


def _probe_tables(reports: list[dict]) -> list[str]:
    out = []
    for rep in reports:
        out.append(f"From `{rep['path'].name}` (`slimp probe --json`):")
        out.append("")
        out.append(
            "| method | split | features | label | low-shot | accuracy | balanced acc. | AUC |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for r in rep["results"]:
            m = r.get("metrics", {})
            feats = "+".join(r.get("features") or []) + (
                f" ({r['pseudo']})" if r.get("pseudo") else ""
            )
            low = "-" if r.get("low_shot") is None else f"{r['low_shot']:g}"
            out.append(
                f"| {r.get('method')} | {r.get('split')} | {feats} | {r.get('label', '-')} | "
                f"{low} | {_fmt(m.get('accuracy'))} | {_fmt(m.get('balanced_accuracy'))} | "
                f"{_fmt(m.get('auc'))} |"
            )
        for w in rep.get("warnings") or []:
            out.append(f"\n> warning from the probe: {w}")
        out.append("")
    return out


# `slimp probe --json` metric -> the hub's metric id (the `evaluate` library's names)
HUB_METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy", "auc": "roc_auc"}


def front_matter(run: Run, reports: list[dict]) -> list[str]:
    """The model card's YAML front matter (the hub's model-card metadata), between `---`
    lines: license, library_name, pipeline_tag, tags, datasets, metrics (those the card quotes
    from `--metrics` reports; none without). Scalars are written as JSON strings, which YAML
    reads as the same strings."""
    cfg = run.config
    name = (cfg.get("schema") or {}).get("name") or "unknown"
    variant = cfg.get("variant", run.model.variant)
    quoted = {k for rep in reports for r in rep["results"] for k in (r.get("metrics") or {})}
    fields = {
        # the weights are learned from the training data, whose terms apply (slimp is MIT)
        "license": "other",
        "license_name": "training-data-terms",
        "library_name": "timm",
        "pipeline_tag": "image-feature-extraction",
        "tags": [
            "image-feature-extraction",
            "timm",
            "slimp",
            f"slimp-{variant}",
            "dermatology",
            "skin-lesion",
            "contrastive-learning",
        ],
        "datasets": [name],
        "metrics": [hub for key, hub in HUB_METRICS.items() if key in quoted],
    }
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key}:" + ("" if value else " []"))
            lines += [f"- {json.dumps(v)}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return [*lines, "---", ""]


def model_card(run: Run, timm_cfg: dict, reports: list[dict]) -> str:
    """The model card (README.md) of an export: what it is, how it was made, what it measured,
    what it is for and what it is not for."""
    cfg = run.config
    schema = cfg.get("schema") or {}
    data = cfg.get("data") or {}
    train = cfg.get("train") or {}
    model = cfg.get("model") or {}
    env = cfg.get("environment") or {}
    variant = cfg.get("variant", run.model.variant)
    arch, size = timm_cfg["architecture"], timm_cfg["pretrained_cfg"]["input_size"][-1]
    name = schema.get("name", "unknown data")
    classes = ", ".join(schema.get("classes") or []) or "-"
    malignant = ", ".join(schema.get("malignant") or []) or "-"
    lines = [
        *front_matter(run, reports),
        f"# SLIMP {variant} model: {model.get('image_model')} on {name}",
        "",
        f"Exported by slimp {__version__} from `{run.checkpoint.name}` of the run "
        f"`{run.run_dir.name}` (sha256 `{run.sha256[:16]}…`). SLIMP (Skin Lesion "
        "Image-Metadata Pre-training) learns skin-lesion representations by aligning each "
        "lesion image with its lesion metadata and each patient's lesions with the patient's "
        f"metadata (nested contrastive learning; paper: {PAPER}).",
        "",
        "## Files",
        "",
        f"- `{IMAGE_WEIGHTS}`, `{TIMM_CONFIG}`: the image encoder as a timm `{arch}` "
        f"(input {size}×{size} px, pooled features of width {timm_cfg['num_features']}, no "
        "classifier).",
        f"- `{HEADS}`: the projection of image features into the shared embedding space "
        "(`image_proj.*`), the metadata (TRACE) encoders and their projections, the "
        "phenotype layer.",
        f"- `{SLIMP_CONFIG}`: the run's full configuration, including the resolved schema "
        "(vocabularies and the mean/std that standardise each numerical field).",
        "",
        "## Use",
        "",
        "```python",
        "import timm, torch",
        'model = timm.create_model("local-dir:EXPORT_DIR", pretrained=True).eval()',
        "cfg = timm.data.resolve_data_config({}, model=model)  # size, mean/std, crop",
        "features = model(timm.data.create_transform(**cfg)(pil_image).unsqueeze(0))",
        "```",
        "",
        "Older timm (without `local-dir:`): `timm.create_model("
        f'"{arch}", pretrained=True, num_classes=0, '
        f'pretrained_cfg_overlay=dict(file="EXPORT_DIR/{IMAGE_WEIGHTS}"), '
        f"**model_args)` with `model_args` from `{TIMM_CONFIG}`. The image features that "
        "`slimp embed` stores are "
        + (
            "these pooled features."
            if variant == "image"
            else f"`image_proj` of `{HEADS}` applied to them: "
            "`features @ W.T + b` with `W, b = heads['image_proj.weight'], "
            "heads['image_proj.bias']`. `slimp encode RUN --image x.jpg --meta row.json` "
            "gives all of a lesion's vectors."
        ),
        "",
        "Preprocessing used in training and by `slimp embed`: decode to RGB, resize the "
        f"shorter side to {size} px (bicubic), centre-crop {size}×{size}, scale to [0, 1], "
        f"normalise with mean {list(timm_cfg['pretrained_cfg']['mean'])} and std "
        f"{list(timm_cfg['pretrained_cfg']['std'])}.",
        "",
        "## Training data and schema",
        "",
        f"- Dataset: `{name}`; {data.get('patients', '?')} patients, "
        f"{data.get('lesions', '?')} images (manifest sha256 "
        f"`{str(data.get('manifest_sha256', '?'))[:16]}…`).",
        f"- Labels (not used by pre-training, which is self-supervised): {classes}; "
        f"malignant: {malignant}.",
    ]
    holdout = run.run_dir / "holdout.json"
    if holdout.is_file():
        try:
            h = read_json(holdout)
            n = len(h.get("patients") or h.get("patient_ids") or [])
            lines.append(
                f"- Held out of training: {n} patients (fraction {h.get('fraction')}, seed "
                f"{h.get('seed')}; `holdout.json` of the run): evaluate on those."
            )
        except (SlimpError, AttributeError, TypeError):
            pass
    excluded = schema.get("excluded") or []
    if excluded:
        lines.append(
            "- Columns excluded from the inputs: "
            + "; ".join(f"`{e.get('name')}` ({e.get('reason')})" for e in excluded)
            + "."
        )
    lines += ["", "Metadata inputs:", "", *_features_table(schema), ""]
    lines += [
        "## Recipe",
        "",
        f"- {cfg.get('kind', 'pretrain')}, variant `{variant}`, image model "
        f"`{model.get('image_model')}` at {size} px, shared dimension {model.get('embed_dim')}, "
        f"TRACE token size {model.get('tab_dim')} ({model.get('tab_layers')} layer(s)).",
        f"- {train.get('epochs')} epochs"
        + (f" (stopped at step {train.get('max_steps')})" if train.get("max_steps") else "")
        + f", {train.get('patients_per_batch')} patients × up to "
        f"{train.get('lesions_per_patient')} lesions per step and process, AdamW lr "
        f"{train.get('lr')}, weight decay {train.get('weight_decay')}, temperature "
        f"{train.get('temperature')}, λ {train.get('lam')}, seed {train.get('seed')}, "
        f"augmentation {'on' if train.get('augment') else 'off'}.",
    ]
    if cfg.get("kind") == "adapt":
        src = cfg.get("source") or {}
        lines.append(
            f"- Continual pre-training (`--tune {cfg.get('tune')}`) of `{src.get('checkpoint')}` "
            f"(sha256 `{str(src.get('sha256', '?'))[:16]}…`, variant {src.get('variant')})."
        )
    if env:
        lines.append(
            f"- Trained with slimp {env.get('slimp')}, torch {env.get('torch')}, timm "
            f"{env.get('timm')}, CUDA {env.get('cuda')}, on {env.get('device')} × "
            f"{env.get('world_size')} process(es); source commit {env.get('git_commit')}."
        )
    lines += ["", "## Measured", ""]
    measured = _training_metrics(run) + ([""] if reports else []) + _probe_tables(reports)
    lines += measured or ["No measurements were recorded with this run."]
    if not reports:
        lines += [
            "",
            "No downstream evaluation was given at export: `slimp embed` then `slimp probe "
            "--json probe.json` on patients held out of pre-training, and export again with "
            "`--metrics probe.json` to quote it here.",
        ]
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- For research on skin-lesion representation learning: frozen features for linear "
        "probes, retrieval and metadata extrapolation, and a starting point for further "
        "training.",
        "- **Not a medical device.** It has not been validated for diagnosis, screening or "
        "triage, and must not be used to make or support clinical decisions about a patient.",
        f"- It learned from `{name}` alone: its image type (clinical photograph or "
        "dermoscopy), population, skin types, body sites, devices and label mix. Performance "
        "on other populations, in particular darker skin types, other devices or other "
        "imaging modalities, is unknown until measured.",
        "- Metadata can leak the label (for example a biopsy flag); the schema's exclusions "
        "above name the columns left out for that reason. Compare any result with the "
        "metadata-only baselines (`slimp probe --baseline`).",
        "- Numbers measured on patients seen during pre-training overstate what the model "
        "does on new patients; prefer patient-disjoint or held-out splits.",
        "",
        "## License",
        "",
        f"The weights were learned from `{name}`: its terms of use apply to them (front "
        "matter: `license: other`). slimp, the software that trained and exported them, is "
        "MIT-licensed.",
        "",
        "## Citation",
        "",
        f"Christopoulos et al., Skin Lesion Phenotyping via Nested Multi-modal Contrastive "
        f"Learning, {PAPER}.",
        "",
    ]
    return "\n".join(lines)
