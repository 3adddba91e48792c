"""Contrastive losses of SLIMP (paper App. C, eq. 1-3) and its baselines, as pure functions.

Every loss L2-normalises its inputs (cosine similarity), divides by a fixed temperature and runs
in float32 with autocast disabled, so it is exact under bf16 autocast. Each returns a dict whose
"loss" entry is the scalar to minimise (plus its parts, for logging).

Distributed training: the cross-sample ("outer") losses accept `gather`, a callable that
all-gathers a `[n, D]` tensor from every rank *with gradient* and returns `[G, D]` (equal n on
every rank; the local rows at `[offset, offset + n)`). The local rows then meet every rank's rows
as negatives; each rank averages over its own rows, so DDP's gradient averaging gives the global
mean. `gather=None` (one process) uses the local rows only.

Several images of one lesion (PAD: 2,298 images of 1,641 lesions; HAM10000; HIBA's clinical +
dermoscopic pairs) carry identical metadata: `groups` (one id per image, equal for images of
one lesion) removes the *other* images of the same lesion from each anchor's negatives, so
twins are never pushed apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from .errors import SlimpError

Gather = Callable[[torch.Tensor], torch.Tensor]

# The paper does not give tau. We fix it (not learned) at 0.1: the usual value of SimCLR/MoCo-style
# losses with a fixed temperature and few negatives (SLIMP's outer loss sees only B=4 patients per
# batch on SLICE-3D, the inner one at most N=100 lesions). CLIP's 0.07 is the *initial* value of a
# learned temperature for batches of tens of thousands; with few negatives a lower tau mostly
# sharpens the loss on hard negatives among a patient's look-alike lesions. Exposed as
# `pretrain --temperature`.
DEFAULT_TEMPERATURE = 0.1
# lambda of eq. 3 (paper Sec. 4: lambda = 0.9).
DEFAULT_LAM = 0.9


def _no_autocast(x: torch.Tensor):
    return torch.autocast(device_type=x.device.type, enabled=False)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise SlimpError(f"temperature must be > 0, got {temperature}")


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def _same_group_negatives(groups: torch.Tensor, all_groups: torch.Tensor, labels: torch.Tensor):
    """[n, G] bool: column j is another image of row i's lesion (not row i's own positive)."""
    same = groups[:, None] == all_groups[None, :]
    same[torch.arange(len(groups), device=groups.device), labels] = False
    return same


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    gather: Gather | None = None,
    offset: int = 0,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP loss) between paired rows of `a` and `b`, cosine similarity / tau.

    Row i of `a` and row i of `b` are the positive pair; every other row of the other side is a
    negative, except rows of the same `groups` id (other images of the same lesion), which are
    left out of the softmax. The a->b and b->a cross-entropies are averaged.

    Shape:
        a, b: [n, D] (any float dtype); groups: [n] ints or None. Returns a float32 scalar.

    Examples:
        >>> a = torch.eye(3)
        >>> float(info_nce(a, a, temperature=0.01)) < 1e-6
        True
    """
    _check_temperature(temperature)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"info_nce needs two [n, D] tensors got {a.shape}, {b.shape}")
    with _no_autocast(a):
        a, b = _normalize(a), _normalize(b)
        a_all, b_all = (a, b) if gather is None else (gather(a), gather(b))
        labels = torch.arange(a.shape[0], device=a.device) + (0 if gather is None else offset)
        logits_ab, logits_ba = a @ b_all.T / temperature, b @ a_all.T / temperature
        if groups is not None:
            g = groups.to(torch.float64)  # float64: exact ids, and the gather works on floats
            g_all = g if gather is None else gather(g)
            twins = _same_group_negatives(g, g_all, labels)
            logits_ab = logits_ab.masked_fill(twins, float("-inf"))
            logits_ba = logits_ba.masked_fill(twins, float("-inf"))
        loss_ab = F.cross_entropy(logits_ab, labels)
        loss_ba = F.cross_entropy(logits_ba, labels)
        return (loss_ab + loss_ba) / 2


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
    _check_temperature(temperature)
    if not 0.0 <= lam <= 1.0:
        raise SlimpError(f"lam must be in [0, 1], got {lam}")
    if image.shape != lesion.shape or image.dim() != 3 or mask.shape != image.shape[:2]:
        raise ValueError(
            f"nested_loss needs image/lesion [B, N, D] and mask [B, N], got "
            f"{tuple(image.shape)}, {tuple(lesion.shape)}, {tuple(mask.shape)}"
        )
    with _no_autocast(image):
        mask = mask.bool()
        # Padding may hold anything (even NaN): zero it so no gradient or NaN leaks from it.
        keep = mask.unsqueeze(-1)
        w = torch.where(keep, _normalize(image), 0.0)
        h = torch.where(keep, _normalize(lesion), 0.0)
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


def nt_xent(
    view1: torch.Tensor,
    view2: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    gather: Gather | None = None,
    offset: int = 0,
    groups: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """SimCLR's NT-Xent: each of the 2L views must find its other view among the 2L - 1 others.

    `groups` (one lesion id per image, or None): the views of *another* image of the same
    lesion are left out of an anchor's softmax (neither positive nor negative), as the inner
    and flat losses treat twins.

    Shape:
        view1, view2: [L, D] (row i of each: two augmentations of one image); groups: [L] ints
        or None. Returns {"loss": scalar} (mean over the 2L anchors).

    Examples:
        >>> v = torch.eye(4)
        >>> float(nt_xent(v, v, temperature=0.01)["loss"]) < 1e-6
        True
    """
    _check_temperature(temperature)
    if view1.shape != view2.shape or view1.dim() != 2:
        raise ValueError(f"nt_xent needs two [L, D] tensors, got {view1.shape}, {view2.shape}")
    with _no_autocast(view1):
        v1, v2 = _normalize(view1), _normalize(view2)
        n = v1.shape[0]
        if gather is None:
            g1, g2, offset = v1, v2, 0
        else:
            g1, g2 = gather(v1), gather(v2)
        total = g1.shape[0]
        anchors = torch.cat([v1, v2])  # [2n, D]
        logits = anchors @ torch.cat([g1, g2]).T / temperature  # [2n, 2G]
        local = torch.arange(n, device=v1.device) + offset
        self_index = torch.cat([local, local + total])
        positive = torch.cat([local + total, local])
        rows = torch.arange(2 * n, device=v1.device)
        logits = logits.index_put((rows, self_index), torch.tensor(float("-inf"), device=v1.device))
        if groups is not None:
            g = groups.to(device=v1.device, dtype=torch.float64)  # float64: exact when gathered
            g_all = g if gather is None else gather(g)
            twins = torch.cat([g, g])[:, None] == torch.cat([g_all, g_all])[None, :]
            twins[rows, self_index] = False
            twins[rows, positive] = False
            logits = logits.masked_fill(twins, float("-inf"))
        return {"loss": F.cross_entropy(logits, positive)}


def add_image_ssl(
    losses: Mapping[str, torch.Tensor],
    view1: torch.Tensor,
    view2: torch.Tensor,
    *,
    weight: float,
    temperature: float = DEFAULT_TEMPERATURE,
    gather: Gather | None = None,
    offset: int = 0,
    groups: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """SLIP (Mu et al. 2022): an image self-supervision term beside a SLIMP loss.

    Returns `losses` with `loss` = losses["loss"] + weight * NT-Xent(view1, view2), plus
    `loss_main` (the SLIMP loss alone) and `loss_ssl` (the NT-Xent, unweighted). `view1`,
    `view2` are the SSL head's outputs for two SimCLR views of each image; `gather`/`offset`
    are those of the views' rows (not the patients'), `groups` their lesion ids.

    Shape:
        view1, view2: [L, P]; groups: [L] or None. Returns float32 scalars.

    Examples:
        >>> base = {"loss": torch.tensor(2.0)}
        >>> v = torch.eye(4)
        >>> out = add_image_ssl(base, v, v, weight=0.5, temperature=1.0)
        >>> round(float(out["loss"] - 2.0 - 0.5 * out["loss_ssl"]), 6)
        0.0
    """
    if not weight >= 0:
        raise SlimpError(f"the image SSL weight must be >= 0, got {weight}")
    ssl = nt_xent(
        view1, view2, temperature=temperature, gather=gather, offset=offset, groups=groups
    )["loss"]
    main = losses["loss"]
    return {**losses, "loss": main + weight * ssl, "loss_main": main, "loss_ssl": ssl}


def compute_loss(
    variant: str,
    outputs: Mapping[str, torch.Tensor],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    lam: float = DEFAULT_LAM,
    gather: Gather | None = None,
    offset: int = 0,
) -> dict[str, torch.Tensor]:
    """The loss of a model variant, from `SlimpModel.forward`'s output dict (keys = arguments)."""
    kw = {"temperature": temperature, "gather": gather, "offset": offset}
    if variant == "nested":
        keys = ("image", "lesion", "mask", "phenotype", "patient")
        return nested_loss(*(outputs[k] for k in keys), lam=lam, groups=outputs.get("groups"), **kw)
    if variant == "flat":
        return flat_loss(outputs["image"], outputs["tabular"], groups=outputs.get("groups"), **kw)
    if variant == "image":
        return nt_xent(outputs["view1"], outputs["view2"], **kw)
    if variant == "sm3":  # SM3 (papers/sm3_paper.txt): its own module (global-batch loss)
        from .losses_sm3 import sm3_loss

        return sm3_loss(outputs, temperature=temperature, gather=gather)
    raise SlimpError(f"unknown variant '{variant}'; choose one of nested, flat, image")
