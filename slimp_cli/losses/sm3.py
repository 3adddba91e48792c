"""SM3's losses (papers/sm3_paper.txt, Wang et al.), as pure functions beside SLIMP's `losses`.

Stage 1, multi-modality SSL (Sec. III-D): L_ssl = L_derm + L_clinic + L_mm (eq. 5), where
L_derm and L_clinic are SimCLR's NT-Xent (eq. 1, `losses/nt_xent.py`) on two augmented views of the
dermoscopic and of the clinical images, and L_mm (eq. 4, `cross_modal_loss`) makes a case's
dermoscopic image find the same case's clinical image. Stage 2, multi-label SSL (Sec. III-E):
eq. 6, a cross-entropy per label to the k-means pseudo-labels (`multilabel_loss`).

Like `losses`, every function divides by a fixed temperature and runs in float32 with autocast
off; the contrastive ones L2-normalise (cosine similarity). A term with no case to compute it on
(a batch without any clinical image, or without any case that has both images) is exactly 0,
keeps the graph (so backward works) and is reported as such.

Several processes (torchrun): `sm3_loss(..., gather=...)` all-gathers every input of the loss
with gradient (`losses.common.Gather`, rows in rank order) and computes the *global batch's* loss on
every rank. The gather's backward sums each rank's gradient onto the local rows and DDP
averages the ranks, so the update is the one-process update on the global batch, whatever the
number of cases (or of cases with both images) each rank holds.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..core.errors import SlimpError
from .common import DEFAULT_TEMPERATURE, Gather, check_temperature, no_autocast, normalize
from .nt_xent import nt_xent

# The inputs of each stage's loss (what `gather_outputs` collects from every rank).
MULTIMODAL_KEYS = ("derm1", "derm2", "clinic1", "clinic2")
CROSS_KEYS = ("cross_anchor", "cross_key1", "cross_key2", "cross1", "cross2")
MULTILABEL_KEYS = ("logits", "targets")


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A float32 scalar 0 connected to the inputs' graphs (backward works, gradients are 0)."""
    return sum((t.float().sum() * 0.0 for t in tensors), torch.zeros((), device=tensors[0].device))


def cross_modal_loss(
    anchor: torch.Tensor,
    key1: torch.Tensor,
    key2: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """SM3's cross-modal contrastive loss L_mm (eq. 4), averaged over the n paired cases.

    For case i with dermoscopic embedding z_i^1 (`anchor`, view 1) and clinical embeddings
    z'_i^1, z'_i^2 (`key1`, `key2`, two views), each view v in {1, 2} gives

        -log e(s(z_i^1, z'_i^v)) / (sum_j e(s(z_i^1, z'_j^v)) + sum_{j != i} e(s(z_i^1, z_j^1)))

    with e(s) = exp(cosine / tau): the positive is the same case's clinical view; the negatives
    are the other cases' clinical views and the other cases' dermoscopic images. L_mm,i is the
    sum of the two terms, as eq. 4 writes it. With all embeddings equal every term is
    log(2n - 1), so chance level is 2 log(2n - 1).

    Shape:
        anchor, key1, key2: [n, P] (row i = case i). Returns a float32 scalar (0 when n = 0).

    Examples:
        >>> e = torch.eye(3)
        >>> float(cross_modal_loss(e, e, e, temperature=0.01)) < 1e-6
        True
    """
    check_temperature(temperature)
    if not (anchor.shape == key1.shape == key2.shape) or anchor.dim() != 2:
        raise ValueError(
            f"cross_modal_loss needs three [n, P] tensors, got {tuple(anchor.shape)}, "
            f"{tuple(key1.shape)}, {tuple(key2.shape)}"
        )
    if anchor.shape[0] == 0:
        return _zero(anchor, key1, key2)
    with no_autocast(anchor):
        a = normalize(anchor)
        n = a.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=a.device)
        within = (a @ a.T / temperature).masked_fill(self_mask, float("-inf"))  # j != i
        target = torch.arange(n, device=a.device)
        total = torch.zeros((), device=a.device)
        for key in (key1, key2):
            across = a @ normalize(key).T / temperature  # [n, n]: column j = case j's view
            total = total + F.cross_entropy(torch.cat([across, within], dim=1), target)
        return total


def sm3_multimodal_loss(
    outputs: Mapping[str, torch.Tensor], *, temperature: float = DEFAULT_TEMPERATURE
) -> dict[str, torch.Tensor]:
    """Eq. 5: L_derm + L_clinic + L_mm from `Sm3Model`'s stage-1 outputs (keys = arguments).

    Keys: `derm1`, `derm2` [n_d, P] (SimCLR projections of the cases with a dermoscopic image),
    `clinic1`, `clinic2` [n_c, P], the cross-modal embeddings of the n_p cases with both images:
    `cross_anchor`, `cross_key1`, `cross_key2` [n_p, P] (`sep_sep`, `sep_shared`: eq. 4) or
    `cross1`, `cross2` [n_p, P] (`concat`: NT-Xent between two views of the concatenated
    features), and `unpaired` (scalar: cases of the batch without both images, which skip the
    cross-modal term). Returns loss, loss_derm, loss_clinic, loss_mm, paired, unpaired.
    """
    parts = {}
    for name in ("derm", "clinic"):
        v1, v2 = outputs[f"{name}1"], outputs[f"{name}2"]
        parts[f"loss_{name}"] = (
            nt_xent(v1, v2, temperature=temperature)["loss"] if len(v1) else _zero(v1, v2)
        )
    if "cross1" in outputs:  # concat fusion: SimCLR on the concatenation of both modalities
        c1, c2 = outputs["cross1"], outputs["cross2"]
        paired = c1.shape[0]
        parts["loss_mm"] = nt_xent(c1, c2, temperature=temperature)["loss"] if paired else _zero(c1)
    else:
        anchor = outputs["cross_anchor"]
        paired = anchor.shape[0]
        parts["loss_mm"] = cross_modal_loss(
            anchor, outputs["cross_key1"], outputs["cross_key2"], temperature=temperature
        )
    loss = parts["loss_derm"] + parts["loss_clinic"] + parts["loss_mm"]
    device = loss.device
    return {
        "loss": loss,
        **parts,
        "paired": torch.tensor(float(paired), device=device),
        "unpaired": torch.as_tensor(outputs["unpaired"], dtype=torch.float32, device=device),
    }


def multilabel_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """Eq. 6: the sum over the L labels of the cross-entropy of label k's scores to its pseudo-label.

    `logits[:, k, :K_k]` are label k's scores to its K_k classification-head rows (the cluster
    centroids: `Sm3Model.label_logits`); columns past K_k are -inf (padding for labels with
    fewer clusters). Scores are divided by tau (stage 2's default is the official run's 1.0,
    see `train.sm3`). With uniform scores the loss is sum_k log K_k.

    Shape:
        logits [B, L, K_max] float; targets [B, L] long in 0..K_k-1. Returns a float32 scalar.

    Examples:
        >>> x = torch.tensor([[[0.0, 0.0], [0.0, float("-inf")]]])
        >>> round(float(multilabel_loss(x, torch.tensor([[1, 0]]), temperature=1.0)), 4)
        0.6931
    """
    check_temperature(temperature)
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"multilabel_loss needs logits [B, L, K] and targets [B, L], got "
            f"{tuple(logits.shape)}, {tuple(targets.shape)}"
        )
    with no_autocast(logits):
        scores = logits.float() / temperature
        per_label = [
            F.cross_entropy(scores[:, k], targets[:, k].long()) for k in range(logits.shape[1])
        ]
        return torch.stack(per_label).sum()


def gather_outputs(outputs: Mapping[str, torch.Tensor], gather: Gather) -> dict:
    """Every rank's rows of each loss input, in rank order (`unpaired`: summed over the ranks).

    Shape: each [n_r, ...] input -> [sum_r n_r, ...]; rows of one case stay aligned across the
    inputs, because every input is gathered in the same rank order.
    """
    out: dict = {}
    for key in (*MULTIMODAL_KEYS, *CROSS_KEYS, *MULTILABEL_KEYS):
        if key not in outputs:
            continue
        value = outputs[key]
        if key == "targets":  # integer ids through the float all-gather (exact below 2**53)
            out[key] = gather(value.to(torch.float64)).long()
        else:
            out[key] = gather(value)
    if "unpaired" in outputs:
        ref = next(iter(out.values()))
        count = torch.as_tensor(outputs["unpaired"], dtype=torch.float32, device=ref.device)
        out["unpaired"] = gather(count.reshape(1)).sum()
    return out


def sm3_loss(
    outputs: Mapping[str, torch.Tensor],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    gather: Gather | None = None,
) -> dict[str, torch.Tensor]:
    """The loss of an SM3 model's outputs: stage 1 (multi-modality) or stage 2 (multi-label,
    recognised by its `logits`/`targets` keys). `gather` (torchrun): the global batch's loss,
    computed on every rank from every rank's rows (`gather_outputs`)."""
    if "logits" in outputs and "targets" not in outputs:
        raise SlimpError("SM3 multi-label outputs lack the pseudo-label targets")
    if gather is not None:
        outputs = gather_outputs(outputs, gather)
    if "logits" in outputs:
        return {
            "loss": multilabel_loss(outputs["logits"], outputs["targets"], temperature=temperature)
        }
    return sm3_multimodal_loss(outputs, temperature=temperature)
