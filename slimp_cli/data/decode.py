"""`--decode gpu`: JPEG bytes decoded where the model runs, then resized/cropped/flipped there.

On a GPU, ViT-S inference outruns about 20 CPU cores of PIL decoding, so with `--decode gpu`
the DataLoader workers hand over the encoded bytes (and, when augmenting, the view's random
draws, taken from the same per-item generator in the same order as the CPU path) and the main
process decodes the whole batch with `torchvision.io.decode_jpeg(device=...)` (nvJPEG on CUDA).
Everything here also runs on CPU tensors, which is how the tests compare it with the PIL path
(`data/transforms.py`): the same crops, flips and colour jitter, pixels within `TOLERANCE`.

NOTE[DIFF] (docs/method.md): the CPU path decodes a JPEG that is at least twice the model's
side at a reduced DCT scale (PIL `draft`) and resamples with PIL's filters; this path decodes
at full scale and resamples with torch's antialiased bicubic (eval) / bilinear (augmentation).
Crop boxes are drawn on the reduced size, as on the CPU path, and scaled to the full size.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import UnidentifiedImageError

from ..core.errors import SlimpError
from .image_io import open_image
from .transforms import JITTER, crop_params

DECODES = ("cpu", "gpu")
# Pixels (uint8 levels) of this path against the PIL path: (mean absolute difference, largest
# difference) allowed by tests/test_decode.py. Measured on CPU tensors (40 ingested 64 px
# PAD-UFES-20 JPEGs + one 300 x 220 JPEG, torchvision 0.29): same size 0 / 0 (both
# libjpeg-turbo); resized to 48 px 0.02 / 6, to 32 px 0.90 / 13 (the large JPEG: PIL's
# reduced-scale decode); light views at 64 px 0.02 / 9, at 32 px 1.29 / 26.
TOLERANCE = {"same_size": (0.1, 2), "resized": (1.5, 24), "augmented": (2.0, 40)}


def check_decode(decode: str, device: torch.device) -> None:
    """SlimpError (one line) for an unknown value or `gpu` on a device that is not CUDA."""
    if decode not in DECODES:
        raise SlimpError(f"unknown --decode {decode!r}; choose {' or '.join(DECODES)}")
    if decode == "gpu" and torch.device(device).type != "cuda":
        raise SlimpError(
            f"--decode gpu decodes JPEGs with CUDA (nvJPEG) but the device is {device}; "
            "use --decode cpu or --device cuda"
        )


def encoded(data: bytes) -> torch.Tensor:
    """Encoded image bytes as the uint8 tensor torchvision's decoders take. Shape: [n_bytes]."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_all(datas: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode a batch: JPEGs together on `device` (one batched call), anything else (PNG) on
    the CPU then moved. Shape: n x [n_bytes] -> n x uint8 [3, H, W] on `device`."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(datas)
    jpeg = [i for i, d in enumerate(datas) if len(d) > 2 and d[0] == 0xFF and d[1] == 0xD8]
    # torchvision 0.29 warns on every call that torchcodec will take over its decoders
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if jpeg:
            # decode_jpeg takes a list: one batched nvJPEG call on CUDA, a loop on the CPU
            batch = [datas[i] for i in jpeg]
            try:
                decoded = decode_jpeg(batch, mode=ImageReadMode.RGB, device=device)
            except TypeError:  # torchvision < 0.19 takes one image a call
                decoded = [decode_jpeg(d, mode=ImageReadMode.RGB, device=device) for d in batch]
            for i, img in zip(jpeg, decoded):
                out[i] = img
        for i, d in enumerate(datas):
            if out[i] is None:
                out[i] = decode_image(d, mode=ImageReadMode.RGB).to(device)
    return out


def resize_center(img: torch.Tensor, size: int) -> torch.Tensor:
    """`image_io.resize_center` on a tensor: shorter side -> `size` (antialiased bicubic, aspect
    kept), centre crop to `size` x `size`; a no-op at that size already.

    Shape:
        img uint8 [3, H, W] -> uint8 [3, size, size].
    """
    from torchvision.transforms.v2 import functional as F

    h, w = img.shape[-2:]
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = F.resize(img, [nh, nw], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img[:, top : top + size, left : left + size]


def eval_images(datas: Sequence[torch.Tensor], *, img_size: int, device) -> torch.Tensor:
    """The evaluation path (embed): decode, resize + centre-crop on `device`.

    Shape:
        n x [n_bytes] -> uint8 [n, 3, img_size, img_size] on `device`.
    """
    return torch.stack([resize_center(img, img_size) for img in decode_all(datas, device)])


def light_view_params(
    data: bytes, img_size: int, rng: np.random.Generator, *, where: str = "image"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of `transforms.light_view` (same generator calls, same order) without
    decoding the image: the crop box in full-size pixels and the flips, and the colour jitter.

    Shape:
        returns (box [6] float32: top, left, height, width, horizontal flip, vertical flip;
        jitter [5] float32).
    """
    try:
        img = open_image(data, where=where)  # the header only
        full_w, full_h = img.size
        if img.format == "JPEG":  # the reduced DCT scale the CPU path decodes at
            img.draft("RGB", (img_size, img_size))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SlimpError(f"{where}: cannot decode image ({exc})") from None
    w, h = img.size
    top, left, ch, cw = crop_params(w, h, rng)
    sx, sy = full_w / w, full_h / h
    hflip, vflip = rng.random() < 0.5, rng.random() < 0.5
    b, c, s = (
        float(rng.uniform(1 - JITTER[k], 1 + JITTER[k]))
        for k in ("brightness", "contrast", "saturation")
    )
    hue = float(rng.uniform(-JITTER["hue"], JITTER["hue"]))
    box = torch.tensor([top * sy, left * sx, ch * sy, cw * sx, hflip, vflip])
    return box, torch.tensor([b, c, s, hue, 0.0])


def light_views(
    datas: Sequence[torch.Tensor], boxes: torch.Tensor, *, img_size: int, device
) -> torch.Tensor:
    """`light_view_params`' views made on `device`: decode, crop the box, resize to the model's
    side (antialiased bilinear, as PIL's resize with a box), flip.

    Shape:
        n x [n_bytes], boxes [n, 6] -> uint8 [n, 3, img_size, img_size] on `device`.
    """
    from torchvision.transforms.v2 import functional as F

    views = []
    for img, box in zip(decode_all(datas, device), boxes.tolist()):
        top, left, h, w = (int(round(v)) for v in box[:4])
        view = F.resized_crop(
            img,
            top,
            left,
            max(1, h),
            max(1, w),
            [img_size, img_size],
            interpolation=F.InterpolationMode.BILINEAR,
            antialias=True,
        )
        if box[4]:
            view = view.flip(-1)
        if box[5]:
            view = view.flip(-2)
        views.append(view)
    return torch.stack(views)
