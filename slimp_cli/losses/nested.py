"""SLIMP's losses (paper App. C, eq. 2-3): the nested loss (lesion level inside each patient,
then patient level) and the flat variant (one InfoNCE between images and all metadata)."""

from __future__ import annotations

import torch

from ..core.errors import SlimpError
from .common import (
    DEFAULT_LAM,
    DEFAULT_TEMPERATURE,
    Gather,
    check_temperature,
    no_autocast,
    normalize,
)
from .info_nce import info_nce


def nested_loss(
    image: torch.Tensor,
    lesion: torch.Tensor,
    mask: torch.Tensor,
    phenotype: torch.Tensor,
    patient: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    lam: float = DEFAULT_LAM,
    gather: Gather | None = None,
    offset: int = 0,
    groups: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """SLIMP's nested contrastive loss (paper eq. 1-3), vectorised over a padded batch.

    Inner loss (eq. 1), per patient p: symmetric InfoNCE among its N_p valid lesions between the
    image embeddings w and lesion-metadata embeddings h; padded slots are masked out (their
    logits are -inf, so they are neither positives nor negatives). The inner losses are averaged
    over *all* B patients, as eq. 3 writes it (lambda / M * sum_p): a patient with one lesion has
    L_lesions^p = 0 exactly (log(e^s / e^s)) and still counts in the mean, so batches rich in
    single-lesion patients carry less inner signal. Outer loss (eq. 2): symmetric InfoNCE across
    patients between the phenotype z and the patient-metadata embedding x. Total (eq. 3):
    lam * L_lesions + (1 - lam) * L_patient.

    NOTE[DIFF]: eq. 1-2 as printed normalise both log-terms over the same index (sum_j
    s(w^l, h^j) and sum_j s(h^j, w^l)), which for the symmetric cosine similarity makes the two
    terms identical (a one-directional loss). We use the symmetric InfoNCE the text describes
    (Sec. 3.1, Alg. 1 "InfoNCELoss"): the second term's denominator runs over the images,
    sum_j exp(s(h^l, w^j) / tau).

    `groups` [B, N] (lesion id of each image): another image of the same lesion is neither a
    positive nor a negative of the inner loss (its logit is left out like padding).

    Shape:
        image, lesion: [B, N, D]; mask: [B, N] bool (True = a real lesion);
        phenotype, patient: [B, D]; groups: [B, N] ints or None.
        Returns float32 scalars loss, loss_lesions, loss_patient.

    Examples:
        >>> w = torch.randn(2, 3, 8); m = torch.tensor([[True, True, False], [True, True, True]])
        >>> out = nested_loss(w, w, m, torch.randn(2, 8), torch.randn(2, 8), temperature=0.1)
        >>> sorted(out)
        ['loss', 'loss_lesions', 'loss_patient']
    """
    check_temperature(temperature)
    if not 0.0 <= lam <= 1.0:
        raise SlimpError(f"lam must be in [0, 1], got {lam}")
    if image.shape != lesion.shape or image.dim() != 3 or mask.shape != image.shape[:2]:
        raise ValueError(
            f"nested_loss needs image/lesion [B, N, D] and mask [B, N], got "
            f"{tuple(image.shape)}, {tuple(lesion.shape)}, {tuple(mask.shape)}"
        )
    with no_autocast(image):
        mask = mask.bool()
        # Padding may hold anything (even NaN): zero it so no gradient or NaN leaks from it.
        keep = mask.unsqueeze(-1)
        w = torch.where(keep, normalize(image), 0.0)
        h = torch.where(keep, normalize(lesion), 0.0)
        sim = torch.einsum("bld,bjd->blj", w, h) / temperature  # s(w^l, h^j) / tau
        row, col = mask[:, :, None], mask[:, None, :]
        # Pairs of two real lesions keep their logit. A real lesion's row/column gets -inf where
        # the other side is padding (excluded from the softmax). Rows/columns of padding are all
        # 0 instead: their log-sum-exp stays finite (no NaN in forward or backward) and their
        # terms are zeroed below.
        out = row ^ col
        both = row & col
        if groups is not None:
            twins = groups[:, :, None] == groups[:, None, :]
            twins &= ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
            out = out | (both & twins)
            both = both & ~twins
        pad = torch.zeros_like(sim).masked_fill(out, float("-inf"))
        logits = torch.where(both, sim, pad)
        positive = torch.diagonal(sim, dim1=1, dim2=2)  # s(w^l, h^l) / tau: [B, N]
        image_to_meta = positive - torch.logsumexp(logits, dim=2)  # over h^j for each w^l
        meta_to_image = positive - torch.logsumexp(logits, dim=1)  # over w^j for each h^l
        per_lesion = torch.where(mask, image_to_meta + meta_to_image, torch.zeros_like(positive))
        n_p = mask.sum(dim=1).clamp(min=1)
        per_patient = -per_lesion.sum(dim=1) / (2 * n_p)  # eq. 1 for each patient
        loss_lesions = per_patient.mean()  # eq. 3: (1 / M) sum_p over all patients
        loss_patient = info_nce(
            phenotype, patient, temperature=temperature, gather=gather, offset=offset
        )
        loss = lam * loss_lesions + (1.0 - lam) * loss_patient
    return {"loss": loss, "loss_lesions": loss_lesions, "loss_patient": loss_patient}


def flat_loss(
    image: torch.Tensor,
    tabular: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    gather: Gather | None = None,
    offset: int = 0,
    groups: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """FLAT variant: one symmetric InfoNCE between the images and their patient+lesion metadata.

    Shape:
        image, tabular: [L, D]; groups: [L] lesion ids or None. Returns {"loss": scalar}.
    """
    loss = info_nce(
        image, tabular, temperature=temperature, gather=gather, offset=offset, groups=groups
    )
    return {"loss": loss}
