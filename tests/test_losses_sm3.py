"""SM3's losses (eq. 1, 4, 5, 6) against hand-written per-sample loops and known answers."""

import math

import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.losses import compute_loss
from slimp_cli.losses.sm3 import cross_modal_loss, multilabel_loss, sm3_loss, sm3_multimodal_loss

SIZES = (5, 3, 2, 3, 3, 3, 3, 2)  # K per label: DIAG, PN, BWV, VS, PIG, STR, DaG, RS


def cos(u, v):
    return float((u @ v) / (u.norm() * v.norm()))


def ref_cross_modal(a, k1, k2, tau):
    """Eq. 4 case by case: two -log terms per anchor z_i^1, averaged over the n cases."""
    a, k1, k2 = a.double(), k1.double(), k2.double()
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        for key in (k1, k2):
            pos = math.exp(cos(a[i], key[i]) / tau)
            den = sum(math.exp(cos(a[i], key[j]) / tau) for j in range(n))
            den += sum(math.exp(cos(a[i], a[j]) / tau) for j in range(n) if j != i)
            total += -math.log(pos / den)
    return total / n


def ref_nt_xent(v1, v2, tau):
    """Eq. 1 for every one of the 2n anchors (SimCLR averages over both views)."""
    z = torch.cat([v1, v2]).double()
    n = v1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j_pos = (i + n) % (2 * n)
        den = sum(math.exp(cos(z[i], z[j]) / tau) for j in range(2 * n) if j != i)
        total += -math.log(math.exp(cos(z[i], z[j_pos]) / tau) / den)
    return total / (2 * n)


def ref_multilabel(logits, targets, tau):
    """Eq. 6: sum over labels of the mean over cases of -log softmax over the label's K_k."""
    total = 0.0
    B, L, _ = logits.shape
    for k in range(L):
        per_case = 0.0
        for b in range(B):
            row = [float(x) / tau for x in logits[b, k] if math.isfinite(float(x))]
            lse = math.log(sum(math.exp(x) for x in row))
            per_case += lse - row[int(targets[b, k])]
        total += per_case / B
    return total


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n,tau", [(1, 0.1), (5, 0.1), (7, 0.5)])
def test_cross_modal_loss_matches_the_loop(n, tau):
    g = _gen(n)
    a, k1, k2 = (torch.randn(n, 6, generator=g) for _ in range(3))
    got = cross_modal_loss(a, k1, k2, temperature=tau)
    assert float(got) == pytest.approx(ref_cross_modal(a, k1, k2, tau), rel=1e-5, abs=1e-6)


def test_cross_modal_known_answers():
    e = torch.eye(6)
    assert float(cross_modal_loss(e, e, e, temperature=0.01)) < 1e-6  # identical views: minimal
    same = torch.ones(6, 4)  # every case looks the same: chance level 2 log(2n - 1)
    assert float(cross_modal_loss(same, same, same)) == pytest.approx(2 * math.log(11), rel=1e-6)
    # keys unrelated to the anchors (independent random directions): chance level
    g = _gen(0)
    a = torch.randn(16, 4096, generator=g)
    keys = torch.randn(16, 4096, generator=g)
    assert float(cross_modal_loss(a, keys, keys, temperature=1.0)) == pytest.approx(
        2 * math.log(31), abs=0.05
    )
    zero = cross_modal_loss(torch.zeros(0, 4, requires_grad=True), *(torch.zeros(0, 4),) * 2)
    assert float(zero.detach()) == 0.0
    zero.backward()  # an empty term keeps the graph


def test_shuffled_pairs_are_no_better_than_chance():
    """Eq. 4 with each case's clinical image given to another case (a derangement) stays at
    or above its chance level 2 log(2n - 1) (the loss when the positive is no more similar
    than the negatives), where the true pairs bring it far below: the loss rewards the pairing
    itself, not anything else about the embeddings."""
    g = _gen(0)
    n, tau = 16, 0.5
    chance = 2 * math.log(2 * n - 1)
    derm = torch.randn(n, 64, generator=g)
    clinic = derm + 0.3 * torch.randn(n, 64, generator=g)  # each case's images look alike
    paired = float(cross_modal_loss(derm, clinic, clinic, temperature=tau))
    assert paired < chance - 1.0
    shuffled = []
    for _ in range(10):  # random derangements: no case keeps its own clinical image
        order = torch.randperm(n, generator=g)
        perm = torch.empty(n, dtype=torch.long)
        perm[order] = order.roll(1)
        keys = clinic[perm]
        shuffled.append(float(cross_modal_loss(derm, keys, keys, temperature=tau)))
    assert min(shuffled) >= chance  # every shuffle: no better than chance
    # just above it (the true partner is now a negative): not an artefact of huge logits
    assert sum(shuffled) / len(shuffled) < chance + 1.0


def test_multimodal_loss_is_the_sum_of_its_parts_and_skips_missing_modalities():
    g = _gen(1)
    tau = 0.2
    d1, d2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    c1, c2 = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    ca, ck1, ck2 = (torch.randn(3, 8, generator=g) for _ in range(3))
    out = sm3_multimodal_loss(
        dict(
            derm1=d1,
            derm2=d2,
            clinic1=c1,
            clinic2=c2,
            cross_anchor=ca,
            cross_key1=ck1,
            cross_key2=ck2,
            unpaired=torch.tensor(2),
        ),
        temperature=tau,
    )
    ref = {
        "loss_derm": ref_nt_xent(d1, d2, tau),
        "loss_clinic": ref_nt_xent(c1, c2, tau),
        "loss_mm": ref_cross_modal(ca, ck1, ck2, tau),
    }
    for k, v in ref.items():
        assert float(out[k]) == pytest.approx(v, rel=1e-5), k
    assert float(out["loss"]) == pytest.approx(sum(ref.values()), rel=1e-5)
    assert float(out["paired"]) == 3 and float(out["unpaired"]) == 2
    # no clinical image and no pair in the batch: those terms are exactly 0
    empty = torch.zeros(0, 8)
    out = sm3_loss(
        dict(
            derm1=d1,
            derm2=d2,
            clinic1=empty,
            clinic2=empty,
            cross_anchor=empty,
            cross_key1=empty,
            cross_key2=empty,
            unpaired=torch.tensor(5),
        ),
        temperature=tau,
    )
    assert float(out["loss_clinic"]) == float(out["loss_mm"]) == 0.0
    assert float(out["loss"]) == pytest.approx(ref["loss_derm"], rel=1e-5)
    assert float(out["paired"]) == 0 and float(out["unpaired"]) == 5
    # concat fusion: NT-Xent between two views of the concatenated features
    out = compute_loss(
        "sm3",
        dict(derm1=d1, derm2=d2, clinic1=c1, clinic2=c2, cross1=ca, cross2=ck1, unpaired=0),
        temperature=tau,
    )
    assert float(out["loss_mm"]) == pytest.approx(ref_nt_xent(ca, ck1, tau), rel=1e-5)


def test_multimodal_loss_known_answers():
    e = torch.eye(4)
    parts = dict(derm1=e, derm2=e, clinic1=e, clinic2=e, cross_anchor=e, cross_key1=e)
    out = sm3_loss({**parts, "cross_key2": e, "unpaired": 0}, temperature=0.01)
    assert float(out["loss"]) < 1e-6  # identical views and pairs
    same = torch.ones(4, 3)
    out = sm3_loss({k: same for k in (*parts, "cross_key2")} | {"unpaired": 0}, temperature=0.1)
    # chance: log(2n - 1) for each NT-Xent, 2 log(2n - 1) for eq. 4
    assert float(out["loss"]) == pytest.approx(4 * math.log(7), rel=1e-6)


def _logits(B, seed):
    g = _gen(seed)
    logits = torch.full((B, len(SIZES), max(SIZES)), float("-inf"))
    targets = torch.zeros(B, len(SIZES), dtype=torch.long)
    for k, size in enumerate(SIZES):
        logits[:, k, :size] = torch.randn(B, size, generator=g)
        targets[:, k] = torch.randint(0, size, (B,), generator=g)
    return logits, targets


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_multilabel_loss_matches_the_loop(tau):
    logits, targets = _logits(6, 3)
    got = multilabel_loss(logits, targets, temperature=tau)
    assert float(got) == pytest.approx(ref_multilabel(logits, targets, tau), rel=1e-5)


def test_multilabel_loss_known_answers():
    _, targets = _logits(4, 0)
    uniform = torch.full((4, len(SIZES), max(SIZES)), float("-inf"))
    for k, size in enumerate(SIZES):
        uniform[:, k, :size] = 0.0
    chance = sum(math.log(s) for s in SIZES)  # uninformative scores: sum_k log K_k
    assert float(multilabel_loss(uniform, targets)) == pytest.approx(chance, rel=1e-6)
    perfect = uniform.clone()
    perfect.scatter_(2, targets.unsqueeze(-1), 1.0)  # cosine 1 to the own centroid, 0 elsewhere
    assert float(multilabel_loss(perfect, targets, temperature=0.01)) < 1e-6
    with pytest.raises(SlimpError, match="targets"):
        sm3_loss({"logits": uniform})
    with pytest.raises(ValueError):
        multilabel_loss(uniform, targets[:, :3])
