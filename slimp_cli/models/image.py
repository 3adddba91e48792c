"""Image encoder: a timm Vision Transformer returning pooled features, never downloaded.

`create_image_encoder` builds any timm ViT with `pretrained=False, num_classes=0` (pooled
features, no classifier) or one of the small local models of `LOCAL_MODELS` (`vit_test`, a 2-block
ViT on 32 px images for tests and the CPU demo). Weights come only from a local file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from ..core.errors import SlimpError
from .config import CNN_STEMS

# Local architectures for CI and the laptop demo (no timm registry entry needed).
LOCAL_MODELS: dict[str, dict] = {
    "vit_test": dict(patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0),
    "vit_demo": dict(patch_size=16, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0),
}
SUGGESTED = "vit_tiny_patch16_224, vit_small_patch16_224, vit_base_patch16_224"
# Local CNNs for SM3's tests (timm ResNets with small widths; SM3's default is resnet50).
LOCAL_CNN_MODELS: dict[str, dict] = {
    "resnet_test": dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8),
}
# Inputs up to this side get SimCLR's small-image stem by default when SM3's ResNet branches
# start from random weights (`default_cnn_stem`): SimCLR uses it on 32-px CIFAR-10 images.
SMALL_STEM_MAX_SIZE = 64


def create_image_encoder(
    name: str,
    *,
    img_size: int,
    weights: str | Path | None = None,
    allow_cnn: bool = False,
    cnn_stem: str = "standard",
) -> tuple[nn.Module, int]:
    """Build the image encoder and return it with its pooled feature width.

    Args:
        name: a timm model name (e.g. `vit_small_patch16_224`) or a key of `LOCAL_MODELS`.
        img_size: input side in pixels (a multiple of the patch size); ViT position embeddings
            are sized for it.
        weights: optional local weights file (see `load_image_weights`).
        allow_cnn: also accept models without an image size (timm CNNs such as `resnet50`, or
            a key of `LOCAL_CNN_MODELS`): SM3's branches. SLIMP needs a ViT (its `adapt` tunes
            the patch embedding), so it leaves this off.
        cnn_stem: "standard" (the model's own) or "small" (`small_stem`: a ResNet-family CNN
            only, without weights).

    Shape:
        module(images [L, 3, img_size, img_size]) -> [L, feature_dim]

    Examples:
        >>> enc, dim = create_image_encoder("vit_test", img_size=32)
        >>> enc(torch.zeros(2, 3, 32, 32)).shape == (2, dim)
        True
    """
    if name in LOCAL_MODELS:
        build = lambda: VisionTransformer(img_size=img_size, num_classes=0, **LOCAL_MODELS[name])
    elif allow_cnn and name in LOCAL_CNN_MODELS:
        build = lambda: _local_cnn(name)
    elif allow_cnn and timm.is_model(name):
        build = lambda: _timm_any(name, img_size)
    elif timm.is_model(name):
        build = lambda: timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size)
    else:
        raise SlimpError(
            f"unknown image model '{name}'; try vit_tiny_patch16_224, vit_small_patch16_224, "
            f"vit_base_patch16_224 (or a local test model: {', '.join(LOCAL_MODELS)}) "
            "or see timm.list_models('vit_*')"
        )
    try:
        module = build()
    except TypeError as exc:  # e.g. a CNN: no img_size argument
        raise SlimpError(
            f"image model '{name}' cannot be built for img_size={img_size} ({exc}); "
            f"slimp supports ViT-family models such as {SUGGESTED}"
        ) from None
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise SlimpError(
            f"image model '{name}' cannot be built for img_size={img_size}: {exc} "
            "(img_size must be a multiple of the patch size)"
        ) from None
    patch = getattr(getattr(module, "patch_embed", None), "patch_size", None)
    if patch is not None and any(img_size % p for p in patch):
        # timm would silently ignore the pixels past the last whole patch.
        raise SlimpError(
            f"img_size={img_size} is not a multiple of the patch size {patch[0]} of '{name}'"
        )
    if cnn_stem == "small":
        if not has_resnet_stem(name):
            raise SlimpError(
                f"--cnn-stem small replaces a ResNet's stem; '{name}' is not a ResNet-family "
                "CNN: use --cnn-stem standard"
            )
        if weights is not None:
            raise SlimpError(
                f"--cnn-stem small replaces the first convolution, so --image-weights {weights} "
                "cannot be loaded into it: use --cnn-stem standard with pretrained weights"
            )
        small_stem(module)
    elif cnn_stem not in CNN_STEMS:
        raise SlimpError(f"unknown cnn_stem '{cnn_stem}'; choose one of {', '.join(CNN_STEMS)}")
    if weights is not None:
        load_image_weights(module, weights)
    return module, int(module.num_features)


def has_resnet_stem(name: str) -> bool:
    """Whether `name` is a ResNet-family CNN (timm's `ResNet`: `conv1`, `bn1`, `maxpool`)."""
    if name in LOCAL_CNN_MODELS:
        return True
    return timm.is_model(name) and timm.models.is_model_in_modules(name, ["resnet"])


def default_cnn_stem(name: str, img_size: int, weights: str | None) -> str:
    """SM3's branch stem when `--cnn-stem` is not given: "small" for a ResNet-family CNN from
    random weights at inputs of at most `SMALL_STEM_MAX_SIZE` px, else "standard"."""
    small = (
        weights is None
        and isinstance(img_size, int)
        and img_size <= SMALL_STEM_MAX_SIZE
        and isinstance(name, str)
        and has_resnet_stem(name)
    )
    return "small" if small else "standard"


def small_stem(module: nn.Module) -> None:
    """Give a timm ResNet SimCLR's stem for small images (Chen et al. 2020, App. B.9, CIFAR-10):
    the first convolution becomes 3 x 3 with stride 1 and the max pool goes.

    The standard stem divides the side by 4 before the first stage, so a 32-px image reaches
    the last stage as a 1 x 1 map (8 x 8 -> 1 x 1); with this one it reaches it as 4 x 4.
    The new convolution is initialised as timm initialises ResNet convolutions.

    Examples:
        >>> enc, _ = create_image_encoder("resnet_test", img_size=32, allow_cnn=True)
        >>> small_stem(enc)
        >>> enc.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:]
        torch.Size([4, 4])
    """
    norm = module.bn1  # BatchNorm2d, or GroupNorm in timm's *_gn ResNets
    width = getattr(norm, "num_features", None) or norm.num_channels
    conv = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    module.conv1 = conv
    module.maxpool = nn.Identity()


def _local_cnn(name: str) -> nn.Module:
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(block=BasicBlock, num_classes=0, **LOCAL_CNN_MODELS[name])


def _timm_any(name: str, img_size: int) -> nn.Module:
    """A timm model with pooled features: ViT-like models get `img_size`, CNNs take any size."""
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size)
    except TypeError:
        return timm.create_model(name, pretrained=False, num_classes=0)


def load_image_weights(module: nn.Module, path: str | Path) -> None:
    """Load a local weights file into `module`, strictly except for classifier heads.

    Accepts a torch file (`torch.load(weights_only=True)`: a state dict, or a dict holding one
    under "state_dict"/"model"/"module") or a `.safetensors` file. A DDP `module.` prefix is
    stripped; classifier-head keys (`head.*`, `fc.*`, `classifier.*`) are dropped because the
    encoder has none; ViT position embeddings are resampled to the model's grid (timm's filter).
    Missing keys or shape mismatches raise SlimpError naming them; other unexpected keys warn.
    """
    path = Path(path)
    if not path.is_file():
        raise SlimpError(f"image weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        reason = f"{type(exc).__name__}: {exc}"
        raise SlimpError(f"{path}: cannot read image weights ({reason})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SlimpError(f"{path}: not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc.", "classifier."))}
    if isinstance(module, VisionTransformer):
        try:
            state = checkpoint_filter_fn(state, module)
        except Exception as exc:  # noqa: BLE001
            raise SlimpError(f"{path}: weights do not fit this ViT ({exc})") from None
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        mismatch = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise SlimpError(
            f"{path}: weights do not match the image model: "
            + "; ".join(mismatch[:3] or [str(exc)])
        ) from None
    if result.missing_keys:
        raise SlimpError(
            f"{path}: weights lack {len(result.missing_keys)} parameter(s) of the image model, "
            f"e.g. {', '.join(result.missing_keys[:5])} (is it the same architecture?)"
        )
    if result.unexpected_keys:
        warnings.warn(
            f"{path}: ignored {len(result.unexpected_keys)} key(s) not in the image model, e.g. "
            + ", ".join(result.unexpected_keys[:5]),
            stacklevel=2,
        )


def patch_embedding_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The ViT patch-embedding layer's parameters (`patch_embed.*`): what `adapt` tunes.

    The paper fine-tunes "the ViT patch-embedding layer"; in timm that is `patch_embed` (the
    patch projection conv and, in some models, its norm). The position embedding and CLS token
    are separate parameters in timm and stay frozen.
    """
    params = [p for n, p in module.named_parameters() if n.startswith("patch_embed.")]
    if not params:
        raise SlimpError(
            f"image model {type(module).__name__} has no patch_embed layer; adapt needs a ViT"
        )
    return params
