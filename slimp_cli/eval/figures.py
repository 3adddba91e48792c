"""The paper's qualitative figures (matplotlib Agg, headless, no pyplot): t-SNE of features
(Fig. 6), metadata feature importance (Fig. 5), image attention maps (Figs. 8-9) and
qualitative metadata retrieval (Fig. 7). The callers write the data behind each PNG as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.paths import atomic_path
from .plots import ensure_dir

__all__ = ["ensure_dir", "tsne_panels", "importance_bars", "attention_grid", "retrieval_panel"]


def _save(fig: Figure, path: Path, rect: tuple[float, float, float, float] | None = None):
    """tight_layout (within `rect`, leaving room for a figure legend) and write the PNG."""
    FigureCanvasAgg(fig)
    if fig.get_layout_engine() is None:
        fig.tight_layout(rect=rect)
    with atomic_path(path) as tmp:  # never a half-written PNG; a full disk is one line
        fig.savefig(tmp, dpi=120, format="png")


CLASS_COLORS = {"benign": "tab:blue", "malignant": "tab:red"}
LEVEL_COLORS = {"patient": "tab:orange", "lesion": "tab:blue"}


def tsne_panels(
    path: Path,
    panels: Mapping[str, np.ndarray],
    malignant: np.ndarray,
    *,
    title: str,
    split: np.ndarray | None = None,
) -> Path:
    """One scatter per feature set of 2-D t-SNE coordinates, benign vs malignant (Fig. 6).

    `split` (the store's train/holdout side of each row, when it has one) marks the rows held
    out of pre-training (larger, black-edged) apart from those the model trained on.

    Shape: panels[name] [n, 2]; malignant [n] in {0, 1}; split [n] of "train"/"holdout".
    """
    k = len(panels)
    fig = Figure(figsize=(4.2 * k, 4.6))
    fig.suptitle(title, fontsize="medium")
    malignant = np.asarray(malignant)
    sides = [(None, np.ones(len(malignant), bool))]
    if split is not None:
        split = np.asarray(split)
        sides = [(s, split == s) for s in ("train", "holdout") if (split == s).any()]
    style = {None: {}, "train": {}, "holdout": {"s": 22, "edgecolors": "black", "linewidths": 0.6}}
    side_name = {None: "", "train": ", trained on", "holdout": ", held out"}
    for i, (name, xy) in enumerate(panels.items()):
        ax = fig.add_subplot(1, k, i + 1)
        for side, on_side in sides:
            for value, label in ((0, "benign"), (1, "malignant")):
                sel = on_side & (malignant == value)
                ax.scatter(
                    xy[sel, 0],
                    xy[sel, 1],
                    **{"s": 9, "alpha": 0.7, "linewidths": 0, **style[side]},
                    color=CLASS_COLORS[label],
                    label=f"{label}{side_name[side]} (n={int(sel.sum())})",
                )
        ax.set_title(name, fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    # one legend below the panels: inside, it would hide points wherever it went
    rows = 1 if len(labels) <= 2 else 2
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize="small", markerscale=2)
    _save(fig, path, rect=(0, 0.07 * rows, 1, 1))
    return path


def importance_bars(path: Path, importance: Mapping[str, Mapping[str, dict]]) -> Path:
    """Horizontal bars of each encoder's normalised feature importance (Fig. 5); one row of
    panels per run, one panel per TRACE encoder (patient, lesion; flat: its single one)."""
    runs = {k: v for k, v in importance.items() if v}
    cols = max(len(v) for v in runs.values())
    longest = max(len(enc["features"]) for v in runs.values() for enc in v.values())
    fig = Figure(figsize=(5.6 * cols, (0.3 * longest + 1.4) * len(runs)))
    for r, (label, encoders) in enumerate(runs.items()):
        order = sorted(encoders, key=lambda e: e != "patient")  # patient first, as in Fig. 5
        for c, name in enumerate(order):
            enc = encoders[name]
            ax = fig.add_subplot(len(runs), cols, r * cols + c + 1)
            values = np.asarray(enc["importance"])
            y = np.arange(len(values))[::-1]
            colors = [LEVEL_COLORS.get(level, "tab:gray") for level in enc["levels"]]
            ax.barh(y, values, color=colors)
            ax.set_yticks(y, enc["features"], fontsize="small")
            ax.set_xlabel("normalised importance (sums to 1)")
            ax.set_xlim(0, max(values.max() * 1.15, 1.0 / len(values) * 1.5))
            ax.axvline(1.0 / len(values), color="gray", linestyle=":", linewidth=1)
            what = {"patient": "patient-level", "lesion": "lesion-level"}[name]
            if len(set(enc["levels"])) > 1:
                what = "patient + lesion (flat)"
            ax.set_title(f"{label}: {what} encoder", fontsize="medium")
            if len(set(enc["levels"])) > 1:
                from matplotlib.patches import Patch

                ax.legend(
                    handles=[Patch(color=c, label=k) for k, c in LEVEL_COLORS.items()],
                    fontsize="small",
                    loc="lower right",
                )
    _save(fig, path)
    return path


def attention_grid(
    path: Path,
    pictures: Sequence[np.ndarray],
    maps: Mapping[str, np.ndarray],
    lesions: Sequence[dict],
) -> Path:
    """Rows: lesions; columns: the image, then each run's [CLS] attention overlaid (Figs. 8-9).

    Each map is min-max scaled per image before it is drawn; the colour bar says so (a colour
    compares places within one image, not across images or runs).

    Shape: pictures[i] [S, S, 3] uint8; maps[run] [n, s, s] (any s: drawn over the image).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n, cols = len(pictures), 1 + len(maps)
    fig = Figure(figsize=(2.6 * cols, 2.6 * n + 1.0), layout="constrained")
    for i, pic in enumerate(pictures):
        side = pic.shape[0]
        ext = (0, side, side, 0)
        ax = fig.add_subplot(n, cols, i * cols + 1)
        ax.imshow(pic, extent=ext)
        les = lesions[i]
        kind = {1: "malignant", 0: "benign"}.get(les["malignant"], "unknown")
        ax.set_title(f"{les['lesion_id']}\n{les.get('label') or ''} ({kind})", fontsize="small")
        ax.axis("off")
        for c, (label, m) in enumerate(maps.items()):
            ax = fig.add_subplot(n, cols, i * cols + c + 2)
            a = m[i]
            a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
            ax.imshow(pic, extent=ext)
            ax.imshow(a, extent=ext, cmap="jet", alpha=0.45, interpolation="bilinear")
            ax.axis("off")
            if i == 0:
                ax.set_title(f"{label}\n[CLS] attention, last block", fontsize="small")
    bar = fig.colorbar(
        ScalarMappable(Normalize(0.0, 1.0), cmap="jet"),
        ax=fig.axes,
        location="bottom",
        shrink=min(0.9, 0.35 * cols),
        aspect=30,
    )
    bar.set_label("[CLS] attention, scaled per image\n(0 = least, 1 = most attended)", size="small")
    bar.ax.tick_params(labelsize="small")
    _save(fig, path)
    return path


def retrieval_panel(path: Path, examples: Sequence[dict], *, title: str) -> Path:
    """Fig. 7: per row a target image, then the reference lesions retrieved for it, each with
    its similarity and a few metadata fields.

    examples[i] = {"image": [S, S, 3] uint8, "caption": str, "retrieved": [{"image",
    "caption"}, ...]}.
    """
    n = len(examples)
    k = max(len(e["retrieved"]) for e in examples)
    # constrained layout keeps the multi-line captions clear of the next row's titles
    fig = Figure(figsize=(2.9 * (k + 1), 3.9 * n + 0.6), layout="constrained")
    fig.suptitle(title, fontsize="medium")
    for i, ex in enumerate(examples):
        ax = fig.add_subplot(n, k + 1, i * (k + 1) + 1)
        ax.imshow(ex["image"])
        ax.set_title("target", fontsize="small", fontweight="bold")
        ax.set_xlabel(ex["caption"], fontsize="x-small")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("black")
            spine.set_linewidth(2)
        for j, hit in enumerate(ex["retrieved"]):
            ax = fig.add_subplot(n, k + 1, i * (k + 1) + j + 2)
            ax.imshow(hit["image"])
            ax.set_title(f"retrieved #{j + 1}", fontsize="small")
            ax.set_xlabel(hit["caption"], fontsize="x-small")
            ax.set_xticks([])
            ax.set_yticks([])
    _save(fig, path)
    return path
