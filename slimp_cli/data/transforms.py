"""Image preprocessing, in one place: decode, resize + centre-crop, normalise, augment.

Ingest (`ingest/images.py`) stores images already square-resized with `resize_center`; training
and `embed` decode them, resize again only when the model's input size differs, and normalise
with the image model's own mean/std (`Preprocess`, recorded in a run's `config.json`).

The lean data path: DataLoader workers do only what needs the PIL image (decode, crop, resize,
flip, blur) and hand **uint8** tensors to the device; normalisation and the colour maths of the
augmentation (brightness, contrast, saturation, hue, greyscale) run batched where the model runs
(`to_model_input`, `color_jitter`), from per-image parameters the workers drew from each item's
own seed, so a run stays exactly resumable. A view is (uint8 [3, S, S], jitter [5]) with
jitter = (brightness, contrast, saturation, hue shift, greyscale 0/1); identity (1, 1, 1, 0, 0).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..core.errors import SlimpError
from .image_io import open_image, resize_center

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Augmentation ranges (`--augment`; always on for the `image` variant's two views).
CROP_SCALE = (0.6, 1.0)  # fraction of the image area kept by the random resized crop
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratio range of the crop
JITTER = dict(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02)  # small colour jitter
# The standard SimCLR recipe (Chen et al. 2020, App. A) for the image-only baseline: crop of
# 8-100% of the area, horizontal flip, strong colour jitter (p 0.8), greyscale (p 0.2),
# Gaussian blur (p 0.5, sigma 0.1-2, kernel ~10% of the side).
SIMCLR_CROP_SCALE = (0.08, 1.0)
SIMCLR_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
# SM3's SimCLR recipe as its official code writes it (tools/backbone_train.py): crop of 50-100%
# of the area (a clinical photograph's small lesion stays in the view), colour jitter of
# strength 1 (0.8, 0.8, 0.8, 0.2; p 0.8), greyscale (p 0.2), flip, 3 x 3 Gaussian blur (p 0.5,
# sigma 0.1-2).
SM3_CROP_SCALE = (0.5, 1.0)
SM3_JITTER = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
# "mild": SM3's from-scratch default (docs/method.md): SimCLR's CIFAR-10 recipe (Chen et al.
# 2020, App. B.9: jitter strength 0.5, no Gaussian blur, which at 32-px images erases what a
# view has left) with SM3's official crop of 50-100% (the lesion stays in the view).
MILD_CROP_SCALE = SM3_CROP_SCALE
MILD_JITTER = SIMCLR_JITTER
# recipe -> (crop scale, jitter strengths, blur: "scaled" SimCLR's, "3x3" SM3's, None)
VIEWS = {
    "simclr": (SIMCLR_CROP_SCALE, SIMCLR_JITTER, "scaled"),
    "sm3": (SM3_CROP_SCALE, SM3_JITTER, "3x3"),
    "mild": (MILD_CROP_SCALE, MILD_JITTER, None),
}
RECIPES = ("light", *VIEWS)


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """How an image model wants its input: side in pixels and per-channel mean/std.

    Examples:
        >>> p = Preprocess(img_size=32)
        >>> p.load(_png_bytes(40, 20)).shape
        torch.Size([3, 32, 32])
    """

    img_size: int  # model input side (square)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # from the image model's pretrained_cfg
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return {"img_size": self.img_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            img_size=int(d["img_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )

    def normalize(self, arr: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> float32 normalised with this model's mean/std."""
        return normalize_uint8(arr, self.mean, self.std)

    def load(self, data: bytes, *, where: str = "image") -> torch.Tensor:
        """The evaluation path (embed, encode): decode, resize + centre-crop, normalise.

        Shape:
            returns [3, img_size, img_size] float32.
        """
        return self.normalize(self.load_uint8(data, where=where))

    def load_uint8(self, data: bytes, *, where: str = "image") -> torch.Tensor:
        """Decode + resize/centre-crop only (the part a DataLoader worker does): uint8."""
        return self.eval_uint8(decode_image(data, where=where, size=self.img_size))

    def eval_uint8(self, img: Image.Image) -> torch.Tensor:
        """Resize + centre-crop (skipped when the size already matches): uint8 [3, S, S]."""
        return pil_to_uint8(resize_center(img, self.img_size))

    def augment_view(
        self, img: Image.Image, rng: np.random.Generator, recipe: str = "light"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random view: (uint8 [3, S, S], jitter [5]) for `to_model_input`. `recipe` "light"
        (SLIMP's `--augment`), "simclr" (the standard SimCLR recipe), "sm3" (SM3's official
        SimCLR parameters) or "mild" (SimCLR's CIFAR-10 recipe with SM3's crop)."""
        if recipe in VIEWS:
            return simclr_view(img, self.img_size, rng, recipe=recipe)
        return light_view(img, self.img_size, rng)

    def augment(
        self, img: Image.Image, rng: np.random.Generator, recipe: str = "light"
    ) -> torch.Tensor:
        """`augment_view` finished on the spot: a normalised float32 view [3, S, S]."""
        view, jitter = self.augment_view(img, rng, recipe)
        return to_model_input(view[None], self, jitter[None])[0]


def decode_image(data: bytes, *, where: str = "image", size: int | None = None) -> Image.Image:
    """Decode JPEG/PNG bytes to an RGB PIL image; SlimpError naming `where` when unreadable.

    `size`: the side the image will be resized to; a JPEG at least twice as large is decoded
    at a reduced scale (DCT scaling: much less work, never below `size`).
    """
    try:
        img = open_image(data, where=where)  # ImageTooLarge: one line naming W x H
        if size is not None and img.format == "JPEG":
            img.draft("RGB", (size, size))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SlimpError(f"{where}: cannot decode image ({exc})") from None
    return img if img.mode == "RGB" else img.convert("RGB")


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize_uint8(arr: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 (x / 255 - mean) / std."""
    m = torch.tensor(mean, dtype=torch.float32, device=arr.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=arr.device).view(3, 1, 1)
    return (arr.float() / 255.0 - m) / s


IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0, 0.0)


def _crop_resize(img: Image.Image, size: int, box: tuple[int, int, int, int]) -> Image.Image:
    """The crop `box` (top, left, h, w) resized to size x size in one PIL call (bilinear)."""
    top, left, h, w = box
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


def light_view(
    img: Image.Image, img_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """SLIMP's light augmentation: random resized crop (60-100% of the area), h/v flips (skin
    lesions have no canonical orientation), small colour jitter (returned, applied later).

    Shape:
        returns (uint8 [3, S, S], jitter [5] float32).
    """
    out = _crop_resize(img, img_size, crop_params(*img.size, rng))
    arr = np.asarray(out, dtype=np.uint8)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    if rng.random() < 0.5:
        arr = arr[::-1]
    b, c, s = (
        float(rng.uniform(1 - JITTER[k], 1 + JITTER[k]))
        for k in ("brightness", "contrast", "saturation")
    )
    hue = float(rng.uniform(-JITTER["hue"], JITTER["hue"]))
    view = torch.from_numpy(np.require(arr, requirements=["C", "W"])).permute(2, 0, 1)
    return view, torch.tensor([b, c, s, hue, 0.0])


def simclr_view(
    img: Image.Image, img_size: int, rng: np.random.Generator, *, recipe: str = "simclr"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A SimCLR-style view, reproducible from `rng`: the standard recipe (SIMCLR_*), SM3's
    official parameters (`recipe="sm3"`, SM3_*) or SimCLR's small-image one (`"mild"`,
    MILD_*: no blur, so no blur draw either).

    NOTE[DIFF]: the Gaussian blur runs here, on the crop, before the colour jitter and
    greyscale that run batched later; SimCLR blurs last. Blur is linear and the colour ops are
    per pixel (contrast uses the image mean, which blur keeps), so the order barely matters.

    Shape:
        returns (uint8 [3, S, S], jitter [5] float32).
    """
    from PIL import ImageFilter

    scale, j, blur = VIEWS[recipe]
    out = _crop_resize(img, img_size, crop_params(*img.size, rng, scale=scale))
    flip = rng.random() < 0.5
    jitter = list(IDENTITY_JITTER)
    if rng.random() < 0.8:
        jitter[:4] = [
            float(rng.uniform(max(0.0, 1 - j["brightness"]), 1 + j["brightness"])),
            float(rng.uniform(max(0.0, 1 - j["contrast"]), 1 + j["contrast"])),
            float(rng.uniform(max(0.0, 1 - j["saturation"]), 1 + j["saturation"])),
            float(rng.uniform(-j["hue"], j["hue"])),
        ]
    if rng.random() < 0.2:
        jitter[4] = 1.0
    if blur is not None and rng.random() < 0.5:
        sigma = float(rng.uniform(0.1, 2.0))
        if (
            blur == "3x3"
        ):  # torchvision GaussianBlur((3, 3), sigma): a 3 x 3 kernel at any image size
            g = np.exp(-0.5 * (np.arange(-1, 2) / sigma) ** 2)
            k = np.outer(g, g) / np.outer(g, g).sum()
            out = out.filter(ImageFilter.Kernel((3, 3), k.ravel().tolist(), scale=1.0))
        else:  # sigma 0.1-2 for a 224 px view (SimCLR's kernel is 10% of the side): scale to S
            out = out.filter(ImageFilter.GaussianBlur(sigma * img_size / 224))
    arr = np.asarray(out, dtype=np.uint8)
    if flip:
        arr = arr[:, ::-1]
    view = torch.from_numpy(np.require(arr, requirements=["C", "W"])).permute(2, 0, 1)
    return view, torch.tensor(jitter, dtype=torch.float32)


LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (ITU-R 601)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def color_matrices(
    jitter: torch.Tensor, mean_grey: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the affine colour map x -> M x + t of brightness b, contrast c, saturation
    s, hue shift h (turns) and greyscale g, applied in that order.

    brightness: b x; contrast: c y + (1 - c) mean_grey(y); saturation: s y + (1 - s) grey(y);
    hue: rotate the YIQ chroma plane by 2 pi h; greyscale: grey(y) in each channel. Every step
    is affine, so the chain is one matrix per image.

    Shape:
        jitter [B, 5], mean_grey [B] (mean luma of the input) -> M [B, 3, 3], t [B, 3].
    """
    dt, dev = jitter.dtype, jitter.device
    b, c, s, h, g = jitter.unbind(1)
    eye = torch.eye(3, dtype=dt, device=dev).expand(len(jitter), 3, 3)
    w = torch.tensor(LUMA, dtype=dt, device=dev)
    ones_w = torch.ones(3, 1, dtype=dt, device=dev) @ w[None]  # grey(y) = (1 w^T) y
    sat = s[:, None, None] * eye + (1 - s)[:, None, None] * ones_w
    yiq = torch.tensor(_RGB2YIQ, dtype=dt, device=dev)
    cos, sin = torch.cos(2 * torch.pi * h), torch.sin(2 * torch.pi * h)
    rot = torch.zeros(len(jitter), 3, 3, dtype=dt, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    hue = torch.linalg.inv(yiq) @ rot @ yiq
    grey = torch.where(g[:, None, None] > 0, ones_w.expand_as(eye), eye)
    after_contrast = grey @ hue @ sat
    m = after_contrast * (c * b)[:, None, None]
    # the contrast blend's offset (1 - c) b mean, carried through the later steps
    t = after_contrast @ ((1 - c) * b * mean_grey)[:, None, None].expand(-1, 3, 1)
    return m, t.squeeze(-1)


def color_jitter(x: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Per-image brightness, contrast, saturation, hue shift and greyscale, batched.

    NOTE[DIFF]: torchvision applies these one by one, clamping to [0, 1] after each, with the
    hue shift in HSV. Here the chain is one affine colour map per image (hue as a rotation of
    the YIQ chroma plane) and one clamp at the end: a few multiply-adds per pixel on any
    device, where the HSV round trip costs more than decoding the image. Without clipping and
    hue, both give the same result (tested); the hue rotations differ slightly in shape.

    Shape:
        x [B, 3, H, W] float in [0, 1]; jitter [B, 5] -> [B, 3, H, W] float in [0, 1].
    """
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device)
    mean_grey = torch.einsum("c,bchw->b", w, x) / (x.shape[-1] * x.shape[-2])
    # the 3 x 3 maps in float64: the YIQ round trip must give the identity to float32 precision
    m, t = color_matrices(jitter.to(torch.float64), mean_grey.to(torch.float64))
    m, t = m.to(x.dtype), t.to(x.dtype)
    return (torch.einsum("bij,bjhw->bihw", m, x) + t[:, :, None, None]).clamp(0.0, 1.0)


def to_model_input(
    images: torch.Tensor, preprocess: Preprocess, jitter: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 images (on the model's device) -> normalised float32, with the augmentation's
    colour maths when `jitter` is given.

    Shape:
        images [B, 3, H, W] uint8; jitter [B, 5] or None -> [B, 3, H, W] float32.
    """
    if images.dtype != torch.uint8:
        return images  # already a model input
    if jitter is None:
        return preprocess.normalize(images)
    x = color_jitter(images.float() / 255.0, jitter.to(images.device))
    m = torch.tensor(preprocess.mean, device=x.device).view(1, 3, 1, 1)
    sd = torch.tensor(preprocess.std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / sd


def crop_params(
    w: int, h: int, rng: np.random.Generator, scale: tuple[float, float] = CROP_SCALE
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop parameter search, drawn from a numpy Generator."""
    area = w * h
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    side = min(w, h)
    return (h - side) // 2, (w - side) // 2, side, side


def model_mean_std(module: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std an image model was trained with (timm's `pretrained_cfg`), else ImageNet's.

    A ViT started from weights that expect 0.5/0.5 (e.g. CLIP- or Inception-style) would
    otherwise be fed mis-normalised images.
    """
    cfg = getattr(module, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _png_bytes(w: int, h: int) -> bytes:
    """A small PNG, for the docstring example."""
    out = io.BytesIO()
    Image.new("RGB", (w, h), (120, 60, 30)).save(out, format="PNG")
    return out.getvalue()
