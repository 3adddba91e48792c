"""`--decode gpu` (slimp_cli/decode.py): the device-side decode/resize/crop path, run on CPU
tensors against the PIL path on ingested PAD-UFES-20 JPEGs; the refusal without CUDA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from slimp_cli import decode
from slimp_cli.errors import SlimpError
from slimp_cli.shards import ShardIndex
from slimp_cli.transforms import Preprocess, decode_image, light_view


def stored_images(shards, n=12) -> list[bytes]:
    index = ShardIndex.open(shards)
    out = []
    for p in range(len(index)):
        rec = index.patient(p)
        out += [rec.read_image(j) for j in range(len(rec.lesions))]
        if len(out) >= n:
            return out[:n]
    return out


def big_jpeg(side_w=300, side_h=220) -> bytes:
    """A photo-like JPEG much larger than the model side (exercises draft + resize)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side_h, 0:side_w]
    base = np.stack([x / side_w * 200, y / side_h * 180, (x + y) % 97 + 60], -1)
    arr = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", quality=90)
    return out.getvalue()


def diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    d = (a.int() - b.int()).abs()
    return float(d.float().mean()), int(d.max())


def within(kind: str, a: torch.Tensor, b: torch.Tensor) -> None:
    mean, most = diff(a, b)
    tol_mean, tol_max = decode.TOLERANCE[kind]
    assert mean <= tol_mean and most <= tol_max, (kind, mean, most)


def test_same_size_decode_matches_pil(pad_shards):
    datas = stored_images(pad_shards)
    size = Image.open(io.BytesIO(datas[0])).size[0]
    got = decode.eval_images([decode.encoded(d) for d in datas], img_size=size, device="cpu")
    want = torch.stack([Preprocess(img_size=size).load_uint8(d) for d in datas])
    assert got.shape == want.shape == (len(datas), 3, size, size)
    within("same_size", got, want)


@pytest.mark.parametrize("size", [32, 48])
def test_resized_decode_matches_pil(pad_shards, size):
    datas = stored_images(pad_shards) + [big_jpeg()]
    got = decode.eval_images([decode.encoded(d) for d in datas], img_size=size, device="cpu")
    want = torch.stack([Preprocess(img_size=size).load_uint8(d) for d in datas])
    assert got.shape == want.shape
    within("resized", got, want)


def test_png_goes_through_the_cpu_decoder():
    out = io.BytesIO()
    Image.new("RGB", (40, 20), (120, 60, 30)).save(out, format="PNG")
    got = decode.eval_images([decode.encoded(out.getvalue())], img_size=16, device="cpu")
    assert got.shape == (1, 3, 16, 16)
    assert torch.equal(got[0, :, 8, 8], torch.tensor([120, 60, 30], dtype=torch.uint8))


@pytest.mark.parametrize("size", [64, 32])
def test_light_views_match_the_pil_views(pad_shards, size):
    datas = stored_images(pad_shards, n=8) + [big_jpeg()]
    boxes, want, jit_gpu, jit_cpu = [], [], [], []
    for i, d in enumerate(datas):
        box, jitter = decode.light_view_params(d, size, np.random.default_rng([i, 7]))
        view, params = light_view(decode_image(d, size=size), size, np.random.default_rng([i, 7]))
        boxes.append(box)
        jit_gpu.append(jitter)
        want.append(view)
        jit_cpu.append(params)
    # the same random draws: identical colour jitter, and flips that agree (checked by pixels)
    torch.testing.assert_close(torch.stack(jit_gpu), torch.stack(jit_cpu))
    got = decode.light_views(
        [decode.encoded(d) for d in datas], torch.stack(boxes), img_size=size, device="cpu"
    )
    assert got.shape == (len(datas), 3, size, size)
    within("augmented", got, torch.stack(want))


def test_decode_gpu_needs_cuda():
    decode.check_decode("cpu", torch.device("cpu"))
    with pytest.raises(SlimpError, match="--decode gpu .* CUDA"):
        decode.check_decode("gpu", torch.device("cpu"))
    with pytest.raises(SlimpError, match="unknown --decode"):
        decode.check_decode("npu", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG on the device)")
def test_device_decode_matches_the_cpu_decoder(pad_shards):
    datas = [decode.encoded(d) for d in stored_images(pad_shards)]
    size = 32
    got = decode.eval_images(datas, img_size=size, device="cuda").cpu()
    want = decode.eval_images(datas, img_size=size, device="cpu")
    within("resized", got, want)
