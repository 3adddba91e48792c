"""`slimp explain`: what a trained model attends to (paper App. G, Fig. 5; App. H, Figs. 8-9).

Attention is read without touching the model's computation: a forward *pre*-hook on the last
attention layer receives that layer's input and recomputes the softmax attention from the
layer's own projections on the side; the hook returns nothing, so every output is exactly what
it is without hooks (tested). Both fused attention kernels (timm's scaled_dot_product_attention,
PyTorch's TransformerEncoderLayer fast path) hide the weights, which is why they are recomputed.

Metadata feature importance (Fig. 5, App. G), per TRACE encoder (lesion, patient; flat: its
single encoder). A = the last layer's self-attention, softmax(QK^T / sqrt(d_head)), averaged
over heads: [T, T] with T = 1 + F tokens ([CLS] + one token per feature). The [CLS] row and
column are dropped (the model pools the mean of the feature tokens, not [CLS]), the diagonal is
masked and each row renormalised to sum 1:  Â_ij = A_ij / sum_{k != i} A_ik  (i != j). Then

    Imp_j = mean over rows (lesions or patients) and over querying features i != j of Â_ij,

normalised so that sum_j Imp_j = 1 per encoder (App. G's formula). With a single feature
Imp = [1]. Token order is the encoder's: categorical/boolean features in schema order, then
numerical ones.

Image attention maps (Figs. 8-9): in the ViT's last block, the [CLS] query's attention to each
patch token, averaged over heads and renormalised over the patches (the map sums to 1), on the
patch grid; upsampled bilinearly to the model's input size for display (`attention.npz`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import SlimpError
from ..core.paths import json_safe, write_json
from ..data.shards import ShardIndex
from ..data.transforms import decode_image, pil_to_uint8, resize_center
from ..models import patient_record
from ..models.runs import Run, check_schema_compatible, load_run

MAX_ROWS = 5000  # rows (lesions) the importance is averaged over; patients are all of theirs
DEFINITION = (
    "importance: last TRACE layer self-attention, averaged over heads; [CLS] row and column "
    "dropped, diagonal masked, rows renormalised; Imp_j = mean over rows and querying "
    "features i != j of the renormalised attention to j; sums to 1 per encoder. image maps: "
    "last ViT block, [CLS] -> patch attention averaged over heads, renormalised to sum 1 over "
    "the patch grid"
)


# ------------------------------------------------------------------------------------------
# attention capture
# ------------------------------------------------------------------------------------------
def trace_attention(layer: nn.TransformerEncoderLayer, src: torch.Tensor) -> torch.Tensor:
    """Softmax self-attention of `layer` on its input `src`, per head.

    Shape: src [n, T, d] (batch_first) -> [n, heads, T, T]; rows sum to 1.
    """
    x = layer.norm1(src) if layer.norm_first else src
    _, weights = layer.self_attn(x, x, x, need_weights=True, average_attn_weights=False)
    return weights


def vit_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention of a timm `Attention` module on its input (the block's norm1(x)).

    Shape: x [B, N, C] -> [B, heads, N, N]; rows sum to 1.
    """
    if not all(hasattr(attn, a) for a in ("qkv", "num_heads", "head_dim", "scale")):
        raise SlimpError(
            f"image attention maps need a timm ViT attention layer (qkv projection); "
            f"{type(attn).__name__} has none"
        )
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block, every forward pass of the model's encoders appends the last attention
    layer's weights to `captured[name]` (name: "image", "lesion", "patient"). Outputs are
    unchanged: the hooks only read the layer's input.
    """
    captured: dict[str, list[torch.Tensor]] = {}
    handles = []

    def keep(name: str, weights: torch.Tensor) -> None:
        captured.setdefault(name, []).append(weights.detach().float().cpu())

    for name in ("lesion", "patient"):
        encoder = getattr(model, f"{name}_encoder", None)
        if encoder is None:
            continue
        layer = encoder.transformer.layers[-1]

        def hook(module, args, kwargs, name=name):
            src = args[0] if args else kwargs["src"]
            with torch.no_grad():
                keep(name, trace_attention(module, src))

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    blocks = getattr(getattr(model, "image_encoder", None), "blocks", None)
    if blocks is not None and len(blocks):
        attn = blocks[-1].attn

        def image_hook(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            with torch.no_grad():
                keep("image", vit_attention(module, x))

        handles.append(attn.register_forward_pre_hook(image_hook, with_kwargs=True))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------------------
# importance
# ------------------------------------------------------------------------------------------
def feature_importance(attention: torch.Tensor | np.ndarray) -> np.ndarray:
    """App. G's normalised importance of each feature token from last-layer attention.

    Shape: attention [n, heads, T, T] (token 0 = [CLS]) -> [T - 1], sums to 1.
    """
    a = np.asarray(attention, dtype=np.float64).mean(axis=1)[:, 1:, 1:]  # heads; drop [CLS]
    f = a.shape[-1]
    if f == 1:
        return np.ones(1)
    a = a * (1.0 - np.eye(f))[None]  # mask the diagonal
    rows = a.sum(axis=-1, keepdims=True)
    a = np.divide(a, rows, out=np.zeros_like(a), where=rows > 0)
    per_feature = a.sum(axis=1).mean(axis=0) / (f - 1)  # mean over i != j, then over rows
    return per_feature / per_feature.sum()


def token_features(features: Sequence[dict]) -> list[dict]:
    """The encoder's token order: categorical/boolean features, then numerical ones."""
    cat = [f for f in features if f["type"] != "numerical"]
    return cat + [f for f in features if f["type"] == "numerical"]


def cls_patch_map(attention: torch.Tensor, *, prefix: int, grid: tuple[int, int]) -> np.ndarray:
    """[CLS] -> patch attention averaged over heads, renormalised to sum 1 over the patches.

    Shape: attention [B, heads, N, N] -> [B, gh, gw].
    """
    a = attention.float().mean(dim=1)[:, 0, prefix:]  # [B, patches]
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return a.reshape(a.shape[0], *grid).numpy()


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of patch-grid maps to the image side. [B, gh, gw] -> [B, S, S]."""
    t = torch.from_numpy(np.asarray(maps, dtype=np.float32))[:, None]
    return torch.nn.functional.interpolate(
        t, size=(size, size), mode="bilinear", align_corners=False
    )[:, 0].numpy()


# ------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------
def _records(index: ShardIndex, max_rows: int):
    """(patient records, lesion records, patient of each lesion) in shard order, up to
    `max_rows` lesions (whole patients)."""
    patients, lesions, owner = [], [], []
    for p in range(len(index)):
        rec = index.patient(p)
        patients.append(patient_record(rec.fields, rec.derived))
        for les in rec.lesions:
            lesions.append(les.get("fields") or {})
            owner.append(len(patients) - 1)
        if len(lesions) >= max_rows:
            break
    return patients, lesions, owner


def run_importance(run: Run, index: ShardIndex, *, max_rows: int = MAX_ROWS, batch: int = 512):
    """{encoder: {"features": [...], "levels": [...], "importance": [...], "rows": n}} of one
    run on the data of `index` (empty for an image-only model)."""
    model = run.model
    inputs = model.inputs
    if model.variant == "image":
        return {}
    patients, lesions, owner = _records(index, max_rows)
    patient_names = {f["name"] for f in (run.schema.patient_all if run.schema else [])}
    out = {}
    dev = next(model.parameters()).device
    with capture_attention(model) as captured, torch.no_grad():
        for s in range(0, len(lesions), batch):
            rows = range(s, min(s + batch, len(lesions)))
            tab = inputs.lesion_tab([patients[owner[i]] for i in rows], [lesions[i] for i in rows])
            model.encode_lesion(tab.to(dev))
        if model.variant == "nested":
            for s in range(0, len(patients), batch):
                model.encode_patient(inputs.patient_tab(patients[s : s + batch]).to(dev))
    encoders = {"lesion": model.lesion_features}
    if model.variant == "nested":
        encoders["patient"] = model.patient_features
    for name, features in encoders.items():
        att = torch.cat(captured[name])
        feats = token_features(features)
        imp = feature_importance(att)
        if len(imp) != len(feats):
            raise SlimpError(
                f"{name} encoder: {len(imp)} feature tokens but {len(feats)} features in the schema"
            )
        out[name] = {
            "features": [f["name"] for f in feats],
            "levels": [
                "patient" if (name == "patient" or f["name"] in patient_names) else "lesion"
                for f in feats
            ],
            "importance": imp.tolist(),
            "rows": int(att.shape[0]),
        }
    return out


def pick_lesions(index: ShardIndex, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """`n` (patient, lesion) pairs, half malignant where possible, drawn with `seed`."""
    pairs = {0: [], 1: [], -1: []}
    for p in range(len(index)):
        for j, les in enumerate(index.patient(p).lesions):
            pairs.setdefault(int(les.get("malignant", -1)), []).append((p, j))
    rng = np.random.default_rng(seed)
    want_mal = min(len(pairs[1]), (n + 1) // 2)
    chosen = []
    for group, k in ((pairs[1], want_mal), (pairs[0] + pairs[-1], n - want_mal)):
        k = min(k, len(group))
        chosen += [group[i] for i in sorted(rng.choice(len(group), size=k, replace=False))]
    if len(chosen) < n:  # too few benign: fill with more malignant
        rest = [pr for pr in pairs[1] if pr not in chosen]
        chosen += rest[: n - len(chosen)]
    return sorted(chosen)


def run_attention_maps(run: Run, index: ShardIndex, pairs: list[tuple[int, int]]):
    """(grid maps [n, gh, gw] summing to 1, upsampled [n, S, S]) of a run's ViT on `pairs`."""
    model = run.model
    enc = model.image_encoder
    grid = tuple(int(g) for g in getattr(enc.patch_embed, "grid_size", ()))
    if len(grid) != 2:
        raise SlimpError(f"{run.run_dir}: image model has no patch grid; attention maps need a ViT")
    prefix = int(getattr(enc, "num_prefix_tokens", 1))
    images = torch.stack(
        [
            run.preprocess.load(index.patient(p).read_image(j), where=f"lesion {p}/{j}")
            for p, j in pairs
        ]
    )
    dev = next(model.parameters()).device
    with capture_attention(model) as captured, torch.no_grad():
        model.encode_image(images.to(dev))
    maps = cls_patch_map(captured["image"][0], prefix=prefix, grid=grid)
    return maps, upsample(maps, run.preprocess.img_size)


def explain(
    run_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    compare: str | os.PathLike | None = None,
    n: int = 8,
    seed: int = 0,
    device: str = "cpu",
    max_rows: int = MAX_ROWS,
) -> dict:
    """Write importance.{png,json} and attention.{png,json,npz} into `out`; returns the summary.

    `compare`: a second run shown beside the first (its importance panels below, its attention
    maps in a column of their own).
    """
    from . import figures

    if n < 1:
        raise SlimpError(f"--n {n}: must be at least 1")
    data_dir, out = Path(data_dir), Path(out)
    index = ShardIndex.open(data_dir)
    runs: dict[str, Run] = {}
    for path in [run_path] + ([compare] if compare is not None else []):
        run = load_run(path, device=device)
        if run.model.variant != "image":
            check_schema_compatible(
                run.schema, index.schema, model_where=str(run.run_dir), data_where=str(data_dir)
            )
        label = Path(run.run_dir).name
        if label in runs:
            label = f"{label} ({len(runs) + 1})"
        runs[label] = run
    figures.ensure_dir(out)

    importance = {
        label: run_importance(run, index, max_rows=max_rows) for label, run in runs.items()
    }
    pairs = pick_lesions(index, n, seed=seed)
    maps, full = {}, {}
    for label, run in runs.items():
        maps[label], full[label] = run_attention_maps(run, index, pairs)
    lesions = []
    display = max(run.preprocess.img_size for run in runs.values())
    pictures = []
    for p, j in pairs:
        rec = index.patient(p)
        les = rec.lesions[j]
        img = decode_image(rec.read_image(j), where=f"{data_dir} lesion {les['lesion_id']}")
        pictures.append(pil_to_uint8(resize_center(img, display)).permute(1, 2, 0).numpy())
        lesions.append(
            {
                "patient_id": rec.patient_id,
                "lesion_id": les["lesion_id"],
                "label": les.get("label"),
                "malignant": int(les.get("malignant", -1)),
            }
        )

    report = {
        "definition": DEFINITION,
        "data": str(data_dir),
        "runs": {
            label: {
                "run": str(run.run_dir),
                "variant": run.model.variant,
                "image_model": run.model.config.image_model,
                "img_size": run.preprocess.img_size,
            }
            for label, run in runs.items()
        },
        "importance": importance,
    }
    files = {}
    if any(importance.values()):
        files["importance"] = figures.importance_bars(out / "importance.png", importance)
        write_json(out / "importance.json", json_safe(report))
    attention = {
        "definition": DEFINITION,
        "lesions": lesions,
        "runs": report["runs"],
        "maps": {label: m.tolist() for label, m in maps.items()},
        "map_sums": {label: m.reshape(len(m), -1).sum(1).tolist() for label, m in maps.items()},
        "npz_keys": {label: f"run{i}" for i, label in enumerate(full)},
    }
    files["attention"] = figures.attention_grid(out / "attention.png", pictures, full, lesions)
    write_json(out / "attention.json", json_safe(attention))
    from ..core.paths import atomic_path

    with atomic_path(out / "attention.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{f"run{i}": m for i, m in enumerate(full.values())})
    report["files"] = {
        "importance": str(out / "importance.png") if "importance" in files else None,
        "attention": str(out / "attention.png"),
        "attention_maps": str(out / "attention.npz"),
    }
    report["lesions"] = lesions
    return json_safe(report)
