"""`--decode gpu` (slimp_cli/data/decode.py): the device-side decode/resize/crop path, run on CPU
tensors against the PIL path on ingested PAD-UFES-20 JPEGs; the refusal without CUDA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from slimp_cli.core.errors import SlimpError
from slimp_cli.data import decode
from slimp_cli.data.shards import ShardIndex
from slimp_cli.data.transforms import Preprocess, decode_image, light_view


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


# ------------------------------------------------------------------ the pipeline's hooks


def _pad_dataset(pad_shards, decode_where: str, augment: bool):
    from slimp_cli.models import build_model
    from slimp_cli.models.config import ModelConfig
    from slimp_cli.train.data import PatientDataset

    index = ShardIndex.open(pad_shards)
    model = build_model(ModelConfig(image_model="vit_test", img_size=32), index.schema)
    return model, PatientDataset(
        index,
        inputs=model.inputs,
        preprocess=model.preprocess,
        augment=augment,
        decode=decode_where,
    )


@pytest.mark.parametrize("augment", [False, True])
def test_training_batches_decoded_on_the_device_match_the_cpu_path(pad_shards, augment):
    """PatientDataset(decode="gpu") -> collate -> batch_to: the device path, on CPU tensors."""
    from slimp_cli.train.batches import batch_to, collate
    from slimp_cli.train.data import PatientItem

    items = [PatientItem(p, (0,), (0, 0, 1, q)) for q, p in enumerate(range(6))]
    batches = {}
    for where in ("cpu", "gpu"):
        model, ds = _pad_dataset(pad_shards, where, augment)
        batches[where] = collate([ds[it] for it in items])
        if where == "gpu":
            assert "images" not in batches[where] and len(batches[where]["encoded"]) == 6
    assert ("boxes" in batches["gpu"]) == augment
    if augment:  # the same draws from the same per-item generator
        torch.testing.assert_close(batches["gpu"]["jitter"], batches["cpu"]["jitter"])
    # identity normalisation and no colour maths: the model input is the decoded pixels / 255
    plain = Preprocess(img_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    got = batch_to({**batches["gpu"], "jitter": None}, torch.device("cpu"), plain)
    assert "encoded" not in got and "boxes" not in got
    pixels = (got["images"] * 255).round().to(torch.uint8)
    within("augmented" if augment else "resized", pixels, batches["cpu"]["images"])
    # and through the normalisation that training feeds the model
    x = batch_to(batches["gpu"], torch.device("cpu"), model.preprocess)["images"]
    assert x.dtype == torch.float32 and x.shape == (6, 3, 32, 32)


def test_the_device_path_refuses_views_it_does_not_make(pad_shards):
    from slimp_cli.train import TrainConfig
    from slimp_cli.train.data import PatientDataset

    model, _ = _pad_dataset(pad_shards, "cpu", False)
    with pytest.raises(SlimpError, match="--decode gpu makes eval views"):
        PatientDataset(
            ShardIndex.open(pad_shards),
            inputs=model.inputs,
            preprocess=model.preprocess,
            augment=True,
            recipe="simclr",
            decode="gpu",
        )
    with pytest.raises(SlimpError, match="--decode gpu"):
        TrainConfig(decode="gpu", image_ssl_weight=0.5)
    with pytest.raises(SlimpError, match="unknown decode"):
        TrainConfig(decode="nvjpeg")


def test_embed_items_decoded_on_the_device_match_the_cpu_path(pad_shards):
    from slimp_cli.data.transforms import Preprocess
    from slimp_cli.features.embed import LesionImages

    pairs = [(p, 0) for p in range(5)]
    pre = Preprocess(img_size=32)
    cpu = torch.stack([LesionImages(pad_shards, pairs, pre)[i] for i in range(5)])
    gpu_items = [LesionImages(pad_shards, pairs, pre, "gpu")[i] for i in range(5)]
    assert all(t.dtype == torch.uint8 and t.ndim == 1 for t in gpu_items)  # the bytes
    within("resized", decode.eval_images(gpu_items, img_size=32, device="cpu"), cpu)


def test_cli_choices_are_the_librarys():
    from slimp_cli.commands import choices

    assert choices.DECODES == decode.DECODES


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_decode_gpu_without_cuda_is_one_line(run_slimp, pad_run, pad_shards, tmp_path):
    for args in (
        ("embed", pad_run, pad_shards, "-o", tmp_path / "s.h5"),
        ("pretrain", pad_shards, "--out", tmp_path / "run", "--max-steps", "1"),
    ):
        res = run_slimp(*args, "--decode", "gpu", "--device", "cpu")
        assert res.returncode == 1, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --decode gpu"), res.stderr
        assert "CUDA" in lines[0]
    assert not (tmp_path / "s.h5").exists()
    assert not (tmp_path / "run" / "checkpoint-last.pt").exists()
