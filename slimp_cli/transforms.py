"""Image preprocessing, in one place: decode, resize + centre-crop, normalise, augment.

Ingest (`ingest/images.py`) stores images already square-resized with `resize_center`; training
and `embed` decode them, resize again only when the model's input size differs, and normalise
with the image model's own mean/std (`Preprocess`, recorded in a run's `config.json`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import SlimpError

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
RECIPES = ("light", "simclr")


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
        return self.eval_view(decode_image(data, where=where))

    def eval_view(self, img: Image.Image) -> torch.Tensor:
        """Resize + centre-crop (skipped when the size already matches) and normalise."""
        return self.normalize(pil_to_uint8(resize_center(img, self.img_size)))

    def augment(
        self, img: Image.Image, rng: np.random.Generator, recipe: str = "light"
    ) -> torch.Tensor:
        """A random augmented view, normalised: [3, S, S] float32. `recipe` "light"
        (`augment_uint8`, SLIMP's `--augment`) or "simclr" (`simclr_uint8`)."""
        if recipe == "simclr":
            return self.normalize(simclr_uint8(img, self.img_size, rng))
        return self.normalize(augment_uint8(img, self.img_size, rng))


def decode_image(data: bytes, *, where: str = "image") -> Image.Image:
    """Decode JPEG/PNG bytes to an RGB PIL image; SlimpError naming `where` when unreadable."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SlimpError(f"{where}: cannot decode image ({exc})") from None
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_center(img: Image.Image, size: int) -> Image.Image:
    """Shorter side -> `size` (bicubic, aspect kept), then centre crop to `size` x `size`.

    A no-op for an image that already has the size (ingest stores them so). `reducing_gap`
    lets PIL reduce large images in integer steps first: same result every run, much faster.
    """
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize_uint8(arr: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 (x / 255 - mean) / std."""
    m = torch.tensor(mean, dtype=torch.float32, device=arr.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=arr.device).view(3, 1, 1)
    return (arr.float() / 255.0 - m) / s


def augment_uint8(img: Image.Image, img_size: int, rng: np.random.Generator) -> torch.Tensor:
    """Random resized crop (60-100% of the area), h/v flips, small colour jitter -> uint8.

    Skin-lesion photographs have no canonical orientation, hence vertical flips too. All
    randomness comes from `rng`, so an augmentation is reproducible from its seed.

    Shape:
        returns [3, img_size, img_size] uint8.
    """
    import torchvision.transforms.v2.functional as TF

    w, h = img.size
    top, left, ch, cw = crop_params(w, h, rng)
    arr = TF.resized_crop(
        pil_to_uint8(img), top, left, ch, cw, [img_size, img_size], antialias=True
    )
    if rng.random() < 0.5:
        arr = TF.horizontal_flip(arr)
    if rng.random() < 0.5:
        arr = TF.vertical_flip(arr)
    b, c, s = (
        float(rng.uniform(1 - JITTER[k], 1 + JITTER[k]))
        for k in ("brightness", "contrast", "saturation")
    )
    hue = float(rng.uniform(-JITTER["hue"], JITTER["hue"]))
    arr = TF.adjust_brightness(arr, b)
    arr = TF.adjust_contrast(arr, c)
    arr = TF.adjust_saturation(arr, s)
    return TF.adjust_hue(arr, hue)


def simclr_uint8(img: Image.Image, img_size: int, rng: np.random.Generator) -> torch.Tensor:
    """The standard SimCLR augmentation (see SIMCLR_*), reproducible from `rng` -> uint8.

    Shape:
        returns [3, img_size, img_size] uint8.
    """
    import torchvision.transforms.v2.functional as TF

    w, h = img.size
    top, left, ch, cw = crop_params(w, h, rng, scale=SIMCLR_CROP_SCALE)
    arr = TF.resized_crop(
        pil_to_uint8(img), top, left, ch, cw, [img_size, img_size], antialias=True
    )
    if rng.random() < 0.5:
        arr = TF.horizontal_flip(arr)
    if rng.random() < 0.8:
        j = SIMCLR_JITTER
        arr = TF.adjust_brightness(
            arr, float(rng.uniform(1 - j["brightness"], 1 + j["brightness"]))
        )
        arr = TF.adjust_contrast(arr, float(rng.uniform(1 - j["contrast"], 1 + j["contrast"])))
        arr = TF.adjust_saturation(
            arr, float(rng.uniform(1 - j["saturation"], 1 + j["saturation"]))
        )
        arr = TF.adjust_hue(arr, float(rng.uniform(-j["hue"], j["hue"])))
    if rng.random() < 0.2:
        arr = TF.rgb_to_grayscale(arr, num_output_channels=3)
    if rng.random() < 0.5:
        kernel = max(3, int(0.1 * img_size) // 2 * 2 + 1)  # odd, ~10% of the side
        sigma = float(rng.uniform(0.1, 2.0))
        arr = TF.gaussian_blur(arr, [kernel, kernel], [sigma, sigma])
    return arr


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
