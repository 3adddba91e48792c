"""Image preprocessing (slimp_cli.data.transforms): decode, resize + centre-crop, normalise, augment."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.transforms import IMAGENET_MEAN, Preprocess, model_mean_std, resize_center
from slimp_cli.models import build_model
from slimp_cli.models.config import ModelConfig


def _jpeg(size=(40, 30), colour=(200, 100, 50)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_load_image_resizes_and_normalises():
    x = Preprocess(img_size=32).load(_jpeg())
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # a flat colour stays flat; ImageNet normalisation of red 200 ~ (200/255 - .485) / .229
    assert abs(float(x[0].mean()) - (200 / 255 - 0.485) / 0.229) < 0.05
    with pytest.raises(SlimpError, match="cannot decode image"):
        Preprocess(img_size=32).load(b"not a jpeg", where="lesion X")


def test_augmentation_is_reproducible_from_its_seed():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    a = Preprocess(img_size=32).augment(img, np.random.default_rng([1, 2, 3]))
    b = Preprocess(img_size=32).augment(img, np.random.default_rng([1, 2, 3]))
    c = Preprocess(img_size=32).augment(img, np.random.default_rng([1, 2, 4]))
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_resize_center_keeps_the_centre_and_skips_matching_sizes():
    img = Image.new("RGB", (60, 30), (0, 0, 0))
    img.paste((255, 255, 255), (15, 0, 45, 30))  # a white centre band 30 px wide
    out = resize_center(img, 30)
    assert out.size == (30, 30)
    assert np.asarray(out).min() >= 250  # only the white centre is kept
    same = Image.new("RGB", (30, 30))
    assert resize_center(same, 30) is same


def test_mean_std_come_from_the_image_model():
    import timm

    clip_like = timm.create_model(
        "vit_base_patch16_clip_224",
        pretrained=False,
        num_classes=0,
        img_size=32,
        patch_size=16,
        depth=1,
    )
    mean, std = model_mean_std(clip_like)
    assert mean != IMAGENET_MEAN and len(mean) == len(std) == 3
    # a model without a timm config (the local test ViT) falls back to ImageNet's
    model = build_model(ModelConfig(variant="image", image_model="vit_test", img_size=32), None)
    assert model.preprocess.mean == IMAGENET_MEAN
    with pytest.raises(SlimpError):
        Preprocess(img_size=8).load(b"")


def test_batched_color_jitter_equals_torchvision_without_clipping_or_hue():
    import torchvision.transforms.v2.functional as TF

    from slimp_cli.data.transforms import color_jitter

    g = torch.Generator().manual_seed(0)
    x = 0.35 + 0.3 * torch.rand(4, 3, 12, 12, generator=g)  # mid-range: no step clips
    jitter = torch.tensor(
        [
            [1.0, 1.0, 1.0, 0.0, 0.0],  # identity
            [1.1, 0.9, 1.1, 0.0, 0.0],
            [0.9, 1.1, 0.9, 0.0, 1.0],  # then greyscale
            [1.05, 1.0, 0.0, 0.0, 0.0],  # saturation 0: grey
        ]
    )
    got = color_jitter(x, jitter)
    for i in range(4):
        b, c, s, _, grey = jitter[i].tolist()
        want = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[i], b), c), s)
        if grey:
            want = TF.rgb_to_grayscale(want, num_output_channels=3)
        torch.testing.assert_close(got[i], want, atol=3e-5, rtol=0)


def test_hue_shift_is_a_chroma_rotation_with_known_answers():
    from slimp_cli.data.transforms import color_jitter

    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    full_turn = color_jitter(x, torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]] * 2))
    torch.testing.assert_close(full_turn, x, atol=1e-5, rtol=0)  # 360 degrees: unchanged
    shifted = color_jitter(x, torch.tensor([[1.0, 1.0, 1.0, 0.1, 0.0]] * 2))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # YIQ's Y
    # a hue rotation keeps the Y (luma) of every pixel and changes the colour
    torch.testing.assert_close((shifted * luma).sum(1), (x * luma).sum(1), atol=1e-5, rtol=0)
    assert (shifted - x).abs().max() > 0.01
    grey = torch.full((1, 3, 4, 4), 0.5)
    torch.testing.assert_close(color_jitter(grey, torch.tensor([[1.0, 1.0, 1.0, 0.3, 0.0]])), grey)


def test_augmented_views_are_uint8_with_their_colour_parameters():
    from slimp_cli.data.transforms import IDENTITY_JITTER, to_model_input

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    pre = Preprocess(img_size=32)
    for recipe in ("light", "simclr"):
        view, jitter = pre.augment_view(img, np.random.default_rng([4, recipe == "light"]), recipe)
        assert view.dtype == torch.uint8 and view.shape == (3, 32, 32) and jitter.shape == (5,)
    # the eval path through to_model_input is the plain normalisation
    u8 = pre.eval_uint8(img)
    ident = torch.tensor([IDENTITY_JITTER])
    torch.testing.assert_close(to_model_input(u8[None], pre)[0], pre.normalize(u8))
    torch.testing.assert_close(
        to_model_input(u8[None], pre, ident)[0], pre.normalize(u8), atol=1e-5, rtol=0
    )


def test_mild_views_crop_half_or_more_jitter_at_half_strength_and_never_blur(monkeypatch):
    """SM3's from-scratch views ("mild"): SM3's crop (50-100% of the area), SimCLR's CIFAR-10
    jitter (strength 0.5: 0.4/0.4/0.4/0.1) and no Gaussian blur; the standard recipe blurs."""
    import PIL.ImageFilter

    import slimp_cli.data.transforms as T

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    pre = Preprocess(img_size=32)
    scales, blurs = [], []
    real_crop = T.crop_params
    monkeypatch.setattr(
        T,
        "crop_params",
        lambda *a, scale, **k: scales.append(scale) or real_crop(*a, scale=scale, **k),
    )
    real_blur = PIL.ImageFilter.GaussianBlur
    monkeypatch.setattr(PIL.ImageFilter, "GaussianBlur", lambda r: blurs.append(r) or real_blur(r))
    jitters = torch.stack(
        [pre.augment_view(img, np.random.default_rng([7, i]), "mild")[1] for i in range(200)]
    )
    assert set(scales) == {(0.5, 1.0)} and blurs == []
    assert float(jitters[:, :3].min()) >= 0.6 and float(jitters[:, :3].max()) <= 1.4
    assert float(jitters[:, 3].abs().max()) <= 0.1 and float(jitters[:, :3].max()) > 1.3
    for i in range(20):
        pre.augment_view(img, np.random.default_rng([7, i]), "simclr")
    assert blurs and (0.08, 1.0) in scales  # the standard recipe does blur, and crops 8-100%
