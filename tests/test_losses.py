"""Losses against hand-written per-sample loops (paper eq. 1-3) and known answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from slimp_cli.core.errors import SlimpError
from slimp_cli.losses import (
    add_image_ssl,
    compute_loss,
    flat_loss,
    info_nce,
    nested_loss,
    nt_xent,
)


def cos(u, v):
    return float((u @ v) / (u.norm() * v.norm()))


def ref_symmetric_infonce(a, b, tau):
    """-1/(2n) sum_l [log e^{s(a_l,b_l)} / sum_j e^{s(a_l,b_j)}
    + log e^{s(b_l,a_l)} / sum_j e^{s(b_l,a_j)}]."""
    a, b = a.double(), b.double()
    n = a.shape[0]
    total = 0.0
    for l in range(n):
        pos = cos(a[l], b[l]) / tau
        den_ab = sum(math.exp(cos(a[l], b[j]) / tau) for j in range(n))
        den_ba = sum(math.exp(cos(b[l], a[j]) / tau) for j in range(n))
        total += (pos - math.log(den_ab)) + (pos - math.log(den_ba))
    return -total / (2 * n)


def ref_nested(image, lesion, mask, phenotype, patient, tau, lam):
    """Eq. 1-3 patient by patient: slice the valid lesions, sum explicit log-softmax terms."""
    B = image.shape[0]
    inner = []
    for p in range(B):
        idx = mask[p].nonzero().flatten()
        inner.append(ref_symmetric_infonce(image[p, idx], lesion[p, idx], tau))
    loss_lesions = sum(inner) / B  # eq. 3: lambda / M * sum_p over all M patients
    loss_patient = ref_symmetric_infonce(phenotype, patient, tau)
    return lam * loss_lesions + (1 - lam) * loss_patient, loss_lesions, loss_patient


def random_batch(counts, D=8, seed=0, contiguous=True):
    g = torch.Generator().manual_seed(seed)
    B, N = len(counts), max(counts)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for p, n in enumerate(counts):
        slots = torch.arange(n) if contiguous else torch.randperm(N, generator=g)[:n]
        mask[p, slots] = True
    image = torch.randn(B, N, D, generator=g)
    lesion = torch.randn(B, N, D, generator=g)
    return image, lesion, mask, torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)


@pytest.mark.parametrize("counts,contiguous", [([3, 1, 5, 2], True), ([4, 1, 1, 6, 3], False)])
@pytest.mark.parametrize("tau,lam", [(0.1, 0.9), (0.5, 0.3)])
def test_nested_loss_matches_per_patient_loop(counts, contiguous, tau, lam):
    args = random_batch(counts, contiguous=contiguous, seed=len(counts))
    out = nested_loss(*args, temperature=tau, lam=lam)
    total, inner, outer = ref_nested(*args, tau, lam)
    assert out["loss_lesions"].item() == pytest.approx(inner, rel=1e-5)
    assert out["loss_patient"].item() == pytest.approx(outer, rel=1e-5)
    assert out["loss"].item() == pytest.approx(total, rel=1e-5)


def test_padding_content_is_ignored_and_gets_no_gradient():
    image, lesion, mask, z, x = random_batch([3, 1, 4])
    out = nested_loss(image, lesion, mask, z, x, temperature=0.1)
    noisy_image = torch.where(mask[..., None], image, torch.randn_like(image) * 100)
    noisy_lesion = torch.where(mask[..., None], lesion, torch.full_like(lesion, float("nan")))
    noisy_image.requires_grad_(True)
    again = nested_loss(noisy_image, noisy_lesion, mask, z, x, temperature=0.1)
    assert again["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)
    again["loss"].backward()
    assert torch.isfinite(noisy_image.grad).all()
    assert noisy_image.grad[~mask].abs().sum() == 0
    assert noisy_image.grad[mask].abs().sum() > 0


def test_aligned_orthonormal_embeddings_give_near_zero_loss():
    eye = torch.eye(6)
    image = torch.stack([eye[:3], eye[3:]])  # two patients, three orthonormal lesions each
    mask = torch.ones(2, 3, dtype=torch.bool)
    out = nested_loss(image, image.clone(), mask, eye[:2], eye[:2].clone(), temperature=0.01)
    assert out["loss"].item() < 1e-6
    # ...and misaligned pairs (lesions swapped within a patient) give a large inner loss
    swapped = image[:, [1, 0, 2]]
    bad = nested_loss(image, swapped, mask, eye[:2], eye[:2], temperature=0.01)
    assert bad["loss_lesions"].item() > 10


def test_identical_embeddings_give_log_n():
    counts = [3, 1, 4]
    image, lesion, mask, z, x = random_batch(counts)
    v = torch.randn(8)
    same = lambda t: v.expand_as(t).clone()  # noqa: E731
    out = nested_loss(same(image), same(lesion), mask, same(z), same(x), temperature=0.1)
    expected_inner = sum(math.log(n) for n in counts) / len(counts)
    assert out["loss_lesions"].item() == pytest.approx(expected_inner, rel=1e-5)
    assert out["loss_patient"].item() == pytest.approx(math.log(len(counts)), rel=1e-5)


def test_single_lesion_patient_has_zero_inner_loss():
    image, lesion, mask, z, x = random_batch([1])
    out = nested_loss(image, lesion, mask, z, x, temperature=0.1)
    assert out["loss_lesions"].item() == 0.0
    # in a mixed batch it still counts in the mean over patients (eq. 3): halves the inner loss
    image, lesion, mask, z, x = random_batch([1, 4], seed=3)
    both = nested_loss(image, lesion, mask, z, x, temperature=0.1)["loss_lesions"]
    alone = nested_loss(image[1:], lesion[1:], mask[1:], z[1:], x[1:], temperature=0.1)
    assert both.item() == pytest.approx(alone["loss_lesions"].item() / 2, rel=1e-6)


def test_lambda_isolates_the_parts():
    args = random_batch([2, 3, 5], seed=7)
    one = nested_loss(*args, temperature=0.2, lam=1.0)
    zero = nested_loss(*args, temperature=0.2, lam=0.0)
    assert one["loss"].item() == pytest.approx(one["loss_lesions"].item())
    assert zero["loss"].item() == pytest.approx(zero["loss_patient"].item())
    assert one["loss"].item() != pytest.approx(zero["loss"].item())
    with pytest.raises(SlimpError, match="lam"):
        nested_loss(*args, temperature=0.2, lam=1.5)
    with pytest.raises(SlimpError, match="temperature"):
        nested_loss(*args, temperature=0.0)


def test_info_nce_matches_reference_and_is_symmetric_in_direction():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    got = info_nce(a, b, temperature=0.3).item()
    assert got == pytest.approx(ref_symmetric_infonce(a, b, 0.3), rel=1e-5)
    assert info_nce(b, a, temperature=0.3).item() == pytest.approx(got, rel=1e-6)
    # scale invariance: cosine similarity
    assert info_nce(3 * a, b / 2, temperature=0.3).item() == pytest.approx(got, rel=1e-5)
    assert flat_loss(a, b, temperature=0.3)["loss"].item() == pytest.approx(got, rel=1e-6)


def ref_nt_xent(v1, v2, tau):
    z = torch.cat([v1, v2]).double()
    n2 = z.shape[0]
    total = 0.0
    for k in range(n2):
        pos = (k + n2 // 2) % n2
        den = sum(math.exp(cos(z[k], z[m]) / tau) for m in range(n2) if m != k)
        total += -(cos(z[k], z[pos]) / tau - math.log(den))
    return total / n2


def test_nt_xent_matches_loop_and_known_answers():
    g = torch.Generator().manual_seed(2)
    v1, v2 = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    got = nt_xent(v1, v2, temperature=0.5)["loss"].item()
    assert got == pytest.approx(ref_nt_xent(v1, v2, 0.5), rel=1e-5)
    # all identical: each anchor sees 2L - 1 equal candidates -> log(2L - 1)
    same = torch.ones(5, 6)
    assert nt_xent(same, same, temperature=0.5)["loss"].item() == pytest.approx(math.log(9))


def fake_gather(full_rows_by_rank, rank):
    """all_gather stand-in: returns every rank's rows, the caller's own with their gradient."""

    def gather(t):
        for candidates in full_rows_by_rank:
            if torch.allclose(t, F.normalize(candidates[rank].float(), dim=-1)):
                parts = [F.normalize(c.float(), dim=-1) for c in candidates]
                parts[rank] = t
                return torch.cat(parts)
        raise AssertionError("gather called with an unexpected tensor")

    return gather


def test_gather_over_ranks_reproduces_the_full_batch_loss():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    a_parts, b_parts = list(a.split(3)), list(b.split(3))
    per_rank = [
        info_nce(
            a_parts[r],
            b_parts[r],
            temperature=0.2,
            gather=fake_gather([a_parts, b_parts], r),
            offset=3 * r,
        )
        for r in range(2)
    ]
    full = info_nce(a, b, temperature=0.2)
    assert (sum(per_rank) / 2).item() == pytest.approx(full.item(), rel=1e-5)
    per_rank = [
        nt_xent(
            a_parts[r],
            b_parts[r],
            temperature=0.2,
            gather=fake_gather([a_parts, b_parts], r),
            offset=3 * r,
        )["loss"]
        for r in range(2)
    ]
    full = nt_xent(a, b, temperature=0.2)["loss"]
    assert (sum(per_rank) / 2).item() == pytest.approx(full.item(), rel=1e-5)


def test_gradients_finite_and_bf16_ok():
    image, lesion, mask, z, x = random_batch([3, 1, 2, 5], seed=9)
    leaves = [t.clone().requires_grad_(True) for t in (image, lesion, z, x)]
    out = nested_loss(leaves[0], leaves[1], mask, leaves[2], leaves[3], temperature=0.07)
    out["loss"].backward()
    for t in leaves:
        assert torch.isfinite(t.grad).all()
    bf = [t.bfloat16() for t in (image, lesion, z, x)]
    got = nested_loss(bf[0], bf[1], mask, bf[2], bf[3], temperature=0.1)["loss"]
    want = nested_loss(
        *(t.float() for t in bf[:2]), mask, *(t.float() for t in bf[2:]), temperature=0.1
    )["loss"]
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = nested_loss(image, lesion, mask, z, x, temperature=0.1)["loss"]
        auto_nt = nt_xent(z, x, temperature=0.1)["loss"]
    assert auto.dtype == torch.float32 and auto_nt.dtype == torch.float32
    exact = nested_loss(image, lesion, mask, z, x, temperature=0.1)["loss"]
    assert auto.item() == pytest.approx(exact.item(), rel=1e-6)  # loss ran in float32


def test_compute_loss_dispatches():
    image, lesion, mask, z, x = random_batch([2, 2])
    nested = compute_loss(
        "nested",
        dict(image=image, lesion=lesion, mask=mask, phenotype=z, patient=x),
        temperature=0.1,
        lam=0.5,
    )
    assert nested["loss"].item() == pytest.approx(
        nested_loss(image, lesion, mask, z, x, temperature=0.1, lam=0.5)["loss"].item()
    )
    flat = compute_loss("flat", {"image": z, "tabular": x}, temperature=0.1, lam=0.9)
    assert flat["loss"].item() == pytest.approx(info_nce(z, x, temperature=0.1).item())
    simclr = compute_loss("image", {"view1": z, "view2": x}, temperature=0.1, lam=0.9)
    assert simclr["loss"].item() == pytest.approx(nt_xent(z, x, temperature=0.1)["loss"].item())
    with pytest.raises(SlimpError, match="unknown variant"):
        compute_loss("clip", {}, temperature=0.1, lam=0.9)


def ref_infonce_without_twins(a, b, groups, tau):
    """The symmetric InfoNCE loop where each anchor's softmax drops the other images of its
    own lesion (same group id) from the candidates: those pairs are neither positive nor
    negative."""
    a, b = a.double(), b.double()
    n = a.shape[0]
    total = 0.0
    for l in range(n):
        keep = [j for j in range(n) if j == l or groups[j] != groups[l]]
        pos = cos(a[l], b[l]) / tau
        den_ab = sum(math.exp(cos(a[l], b[j]) / tau) for j in keep)
        den_ba = sum(math.exp(cos(b[l], a[j]) / tau) for j in keep)
        total += (pos - math.log(den_ab)) + (pos - math.log(den_ba))
    return -total / (2 * n)


def test_flat_loss_drops_twin_images_from_the_negatives():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(7, 8, generator=g), torch.randn(7, 8, generator=g)
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3])  # lesions 0 and 2 have several images
    got = float(flat_loss(a, b, temperature=0.2, groups=groups)["loss"])
    assert got == pytest.approx(ref_infonce_without_twins(a, b, groups.tolist(), 0.2), rel=1e-5)
    # unique groups: the plain InfoNCE
    plain = float(flat_loss(a, b, temperature=0.2, groups=torch.arange(7))["loss"])
    assert plain == pytest.approx(ref_symmetric_infonce(a, b, 0.2), rel=1e-5)
    # known answer: two identical images of one lesion with the same metadata are no longer
    # each other's negatives, so a perfect alignment reaches (near) zero loss
    x = torch.eye(3)[[0, 0, 1]]
    assert float(flat_loss(x, x, temperature=0.01, groups=torch.tensor([5, 5, 6]))["loss"]) < 1e-6
    assert float(flat_loss(x, x, temperature=0.01)["loss"]) > 0.4  # the twin as a negative


def test_nested_loss_with_twins_equals_the_loop_that_drops_the_pair():
    image, lesion, mask, phen, pat = random_batch([3, 1, 4], seed=9)
    groups = torch.tensor([[0, 0, 1, 0], [2, 0, 0, 0], [3, 4, 4, 5]])  # twins in patients 0, 2
    out = nested_loss(image, lesion, mask, phen, pat, temperature=0.3, lam=0.7, groups=groups)
    inner = []
    for p in range(3):
        idx = mask[p].nonzero().flatten()
        inner.append(
            ref_infonce_without_twins(image[p, idx], lesion[p, idx], groups[p, idx].tolist(), 0.3)
        )
    want_inner = sum(inner) / 3
    assert float(out["loss_lesions"]) == pytest.approx(want_inner, rel=1e-5)
    outer = ref_symmetric_infonce(phen, pat, 0.3)
    assert float(out["loss"]) == pytest.approx(0.7 * want_inner + 0.3 * outer, rel=1e-5)
    # gradients stay finite with twins and padding together
    image.requires_grad_(True)
    nested_loss(image, lesion, mask, phen, pat, groups=groups)["loss"].backward()
    assert torch.isfinite(image.grad).all()


def ref_nt_xent_without_twins(v1, v2, groups, tau):
    """NT-Xent over the 2L views where an anchor's candidates skip the views of *other* images
    of its own lesion (same group id); its own other view stays the positive."""
    z = torch.cat([v1, v2]).double()
    g = list(groups) * 2
    n2 = z.shape[0]
    total = 0.0
    for k in range(n2):
        pos = (k + n2 // 2) % n2
        keep = [m for m in range(n2) if m != k and (m == pos or g[m] != g[k])]
        den = sum(math.exp(cos(z[k], z[m]) / tau) for m in keep)
        total += -(cos(z[k], z[pos]) / tau - math.log(den))
    return total / n2


def test_nt_xent_drops_the_views_of_twin_images():
    g = torch.Generator().manual_seed(6)
    v1, v2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    groups = torch.tensor([0, 0, 1, 2, 2, 2])  # lesions 0 and 2 have several images
    got = float(nt_xent(v1, v2, temperature=0.3, groups=groups)["loss"])
    assert got == pytest.approx(ref_nt_xent_without_twins(v1, v2, groups.tolist(), 0.3), rel=1e-5)
    # unique groups: plain NT-Xent
    plain = float(nt_xent(v1, v2, temperature=0.3, groups=torch.arange(6))["loss"])
    assert plain == pytest.approx(ref_nt_xent(v1, v2, 0.3), rel=1e-5)
    # known answer: two images of one lesion, each with both views equal, and a third image:
    # with the twin left out every anchor meets only its positive and the third image's views
    x = torch.eye(3)[[0, 0, 1]]
    twins = float(nt_xent(x, x, temperature=0.01, groups=torch.tensor([4, 4, 5]))["loss"])
    assert twins < 1e-6
    # without: the twin's two views tie with the positive, -log(1/3) for four of six anchors
    assert float(nt_xent(x, x, temperature=0.01)["loss"]) == pytest.approx(
        4 / 6 * math.log(3), rel=1e-4
    )


def test_add_image_ssl_is_the_loss_plus_w_times_nt_xent():
    image, lesion, mask, phen, pat = random_batch([3, 1, 2], seed=5)
    nested = nested_loss(image, lesion, mask, phen, pat, temperature=0.2, lam=0.8)
    g = torch.Generator().manual_seed(7)
    v1, v2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    groups = torch.tensor([0, 0, 1, 2, 3, 3])
    out = add_image_ssl(nested, v1, v2, weight=0.7, temperature=0.2, groups=groups)
    ssl = ref_nt_xent_without_twins(v1, v2, groups.tolist(), 0.2)
    want_nested, lesions, patient = ref_nested(image, lesion, mask, phen, pat, 0.2, 0.8)
    assert float(out["loss"]) == pytest.approx(want_nested + 0.7 * ssl, rel=1e-5)
    assert float(out["loss_ssl"]) == pytest.approx(ssl, rel=1e-5)
    assert float(out["loss_main"]) == pytest.approx(want_nested, rel=1e-5)
    assert float(out["loss_lesions"]) == pytest.approx(lesions, rel=1e-5)
    assert float(out["loss_patient"]) == pytest.approx(patient, rel=1e-5)
    # W = 0: the loss is the nested loss, exactly
    zero = add_image_ssl(nested, v1, v2, weight=0.0, temperature=0.2)
    assert torch.equal(zero["loss"], nested["loss"])
    with pytest.raises(SlimpError, match="must be >= 0"):
        add_image_ssl(nested, v1, v2, weight=-1.0)


def test_ssl_gather_with_twins_reproduces_the_full_batch_loss():
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    groups = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 3.0])  # a twin pair on each rank's side
    # across the rank boundary too: image 2 (rank 0) and image 3 (rank 1) are one lesion
    a_parts, b_parts, g_parts = list(a.split(3)), list(b.split(3)), list(groups.split(3))

    def gather(rank):
        base = fake_gather([a_parts, b_parts], rank)

        def fn(t):
            if t.dtype == torch.float64:  # the group ids
                return torch.cat(g_parts).double()
            return base(t)

        return fn

    per_rank = [
        nt_xent(
            a_parts[r],
            b_parts[r],
            temperature=0.2,
            gather=gather(r),
            offset=3 * r,
            groups=g_parts[r],
        )["loss"]
        for r in range(2)
    ]
    full = nt_xent(a, b, temperature=0.2, groups=groups)["loss"]
    assert (sum(per_rank) / 2).item() == pytest.approx(full.item(), rel=1e-5)
    assert full.item() == pytest.approx(
        ref_nt_xent_without_twins(a, b, groups.tolist(), 0.2), rel=1e-5
    )
