"""Configuration dataclasses: everything needed to rebuild a model, with a comment per field.

`ModelConfig.to_dict()` goes into a run dir's `config.json`; `ModelConfig.from_dict()` rebuilds it
(unknown keys are an error, missing keys take the defaults, so old configs stay loadable).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.errors import SlimpError

VARIANTS = ("nested", "flat", "image", "sm3")
# SM3's multi-modality fusion strategies (paper Table II); sep_sep is the paper's method.
FUSIONS = ("concat", "sep_shared", "sep_sep")
# SM3's ResNet branch stems (`models.image.small_stem`).
CNN_STEMS = ("standard", "small")


class DictConfig:
    """JSON round trip shared by the frozen config dataclasses (ModelConfig, TrainConfig).

    Subclasses set `_KIND`, the word used in errors ("model config key", "train option").
    """

    _KIND = "config key"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Inverse of `to_dict`; unknown keys raise SlimpError, missing keys take defaults."""
        if not isinstance(d, dict):
            raise SlimpError(f"{cls.__name__} needs a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SlimpError(
                f"unknown {cls._KIND}(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**d)

    def replace(self, **changes: Any):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SlimpError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(DictConfig):
    """The architecture of a SLIMP model (not the training recipe).

    Examples:
        >>> cfg = ModelConfig(image_model="vit_tiny_patch16_224", img_size=224)
        >>> ModelConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    _KIND = "model config key"

    # "nested" (SLIMP: inner lesion loss + outer patient loss), "flat" (one image<->metadata
    # InfoNCE over concatenated patient+lesion metadata), "image" (SimCLR baseline) or "sm3"
    # (SM3, papers/sm3_paper.txt: two image branches, dermoscopic and clinical; `pretrain
    # --method sm3` sets it).
    variant: str = "nested"
    # timm model name (a ViT: vit_tiny/small/base_patch16_224, ...) or a local test model
    # (`vit_test`); the paper's default is ViT-Small. Never downloaded: pretrained=False.
    image_model: str = "vit_small_patch16_224"
    # Input image side in pixels; must be a multiple of the ViT patch size.
    img_size: int = 224
    # Optional local weights file (torch state dict or .safetensors) for the image encoder; only
    # read when the model is first built (a checkpoint holds the weights afterwards).
    image_weights: str | None = None
    # Shared embedding dimension D of w, h, z and x. None = the image encoder's width: the paper
    # defines D as "the dimensionality of the image embedding" (384 for ViT-Small).
    embed_dim: int | None = None
    # TRACE token dimension d. None = the image encoder's width: the paper's parameter counts
    # (Table 9: +3M/+12M/+50M over ViT-T/S/B) grow with the square of the ViT width, which is
    # what a TRACE encoder whose d follows the ViT width gives.
    tab_dim: int | None = None
    # TRACE transformer layers, attention heads, FFN width multiple and dropout (TRACE defaults:
    # 1 layer, 2 heads, FFN 4d; dropout 0 because the contrastive pre-training data is large).
    tab_layers: int = 1
    tab_heads: int = 2
    tab_ffn_mult: int = 4
    tab_dropout: float = 0.0
    # SM3 only. Fusion of the two branches in the multi-modality stage (Table II): "sep_sep"
    # (the paper's: a cross-modal contrastive loss with a projection head per modality),
    # "sep_shared" (one head shared by both) or "concat" (SimCLR on the concatenated features).
    fusion: str = "sep_sep"
    # SM3 only: output width of the contrastive projection heads (paper: 128) and of each
    # label-specific projection of the multi-label stage (paper: 512).
    proj_dim: int = 128
    label_dim: int = 512
    # SM3 only: the stem of ResNet-family branches: "standard" (the CNN's own, 7x7 stride-2
    # convolution and max pool) or "small" (SimCLR's for 32-px CIFAR-10 images: 3x3 stride 1,
    # no max pool). `pretrain --method sm3` picks "small" from random weights at inputs of at
    # most 64 px (`models.image.default_cnn_stem`); a config without the key is "standard".
    cnn_stem: str = "standard"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise SlimpError(
                f"unknown variant '{self.variant}'; choose one of {', '.join(VARIANTS)}"
            )
        if not isinstance(self.image_model, str) or not self.image_model:
            raise SlimpError(
                "image_model must be a non-empty model name, e.g. vit_small_patch16_224"
            )
        positive_int("img_size", self.img_size)
        if self.image_weights is not None and not isinstance(self.image_weights, str):
            raise SlimpError(
                f"image_weights must be a file path or null, got {self.image_weights!r}"
            )
        for name in ("embed_dim", "tab_dim"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        for name in ("tab_layers", "tab_heads", "tab_ffn_mult"):
            positive_int(name, getattr(self, name))
        if isinstance(self.tab_dropout, bool) or not isinstance(self.tab_dropout, (int, float)):
            raise SlimpError(f"tab_dropout must be a number in [0, 1), got {self.tab_dropout!r}")
        if not 0.0 <= self.tab_dropout < 1.0:
            raise SlimpError(f"tab_dropout must be in [0, 1), got {self.tab_dropout}")
        if self.fusion not in FUSIONS:
            raise SlimpError(f"unknown fusion '{self.fusion}'; choose one of {', '.join(FUSIONS)}")
        if self.cnn_stem not in CNN_STEMS:
            raise SlimpError(
                f"unknown cnn_stem '{self.cnn_stem}'; choose one of {', '.join(CNN_STEMS)}"
            )
        if self.cnn_stem != "standard" and self.variant != "sm3":
            raise SlimpError("cnn_stem is an option of SM3's CNN branches (--method sm3)")
        positive_int("proj_dim", self.proj_dim)
        positive_int("label_dim", self.label_dim)
        if self.tab_dim is not None and self.tab_dim % self.tab_heads:
            raise SlimpError(
                f"tab_dim ({self.tab_dim}) must be divisible by tab_heads ({self.tab_heads})"
            )
