"""Any timm image encoder under slimp's protocol: `slimp embed DATA --image-model NAME
--image-weights FILE`.

The paper compares SLIMP against foundation models (DINOv2, CLIP, PanDerm...; Table 2). This
embeds a dataset's images with any timm model and a *local* weights file (nothing is downloaded:
`pretrained=False`, then `models.image.load_image_weights`) into an ordinary feature store with
image features only, so `slimp probe` scores it with exactly the splits, seeds and metadata
baselines used for SLIMP.

Preprocessing is the model's own: its timm `pretrained_cfg` mean/std (`transforms.
model_mean_std`) and input side (`--img-size`, default the `pretrained_cfg` input size), the
image resized (shorter side) and centre-cropped to that side, as `embed` does for SLIMP.
ViT-family models are built for `--img-size` (position embeddings resampled from the weights);
other models (CNNs) take the image at that size as they are.

The store holds no `split`: no row was seen in any training of this tool, so `probe` uses
`--split random` (lesion-grouped) or `--split patient`. Its config records the model, the
weights file and its sha256 (as `checkpoint_sha256`, so `extrapolate` can tell two foreign
stores of different weights apart) and `"foreign": true`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

from ..core.devices import resolve_device
from ..core.errors import SlimpError
from ..data.schema import encode_raw, raw_columns
from ..data.shards import ShardIndex
from ..data.transforms import Preprocess, model_mean_std, to_model_input
from ..models import patient_record
from ..models.image import LOCAL_MODELS, create_image_encoder, load_image_weights
from ..models.runs import sha256_file
from .embed import LesionImages
from .plan import has_official_split, raw_feature_levels
from .store import FeatureStoreWriter


def build_foreign_encoder(
    name: str, *, weights: str | Path, img_size: int | None = None
) -> tuple[nn.Module, Preprocess]:
    """A timm model without classifier (pooled features) with local weights, and how it reads
    images. `img_size` None = the model's pretrained_cfg input size.

    Shape: module(images [L, 3, S, S]) -> [L, module.num_features].
    """
    weights = Path(weights)
    if not weights.is_file():
        raise SlimpError(f"--image-weights {weights}: file not found")
    if name in LOCAL_MODELS:
        module, _ = create_image_encoder(name, img_size=img_size or 32, weights=weights)
        size = img_size or 32
    else:
        if not timm.is_model(name):
            raise SlimpError(
                f"--image-model {name!r}: not a timm model name (see timm.list_models())"
            )
        default = _default_size(name)
        size = img_size or default
        if size < 8:
            raise SlimpError(f"--img-size {size}: must be at least 8 pixels")
        try:
            # ViT-family models take img_size (position embeddings for that grid)
            module = timm.create_model(name, pretrained=False, num_classes=0, img_size=size)
        except TypeError:  # a CNN: no img_size argument, any input size works
            module = timm.create_model(name, pretrained=False, num_classes=0)
        except (AssertionError, ValueError, RuntimeError) as exc:
            raise SlimpError(f"--image-model {name} cannot be built for {size} px: {exc}") from None
        patch = getattr(getattr(module, "patch_embed", None), "patch_size", None)
        if patch is not None and any(size % p for p in patch):
            raise SlimpError(f"--img-size {size} is not a multiple of the patch size {patch[0]}")
        load_image_weights(module, weights)
    mean, std = model_mean_std(module)
    module.eval()
    return module, Preprocess(img_size=int(size), mean=mean, std=std)


def _default_size(name: str) -> int:
    cfg = timm.create_model(name, pretrained=False, num_classes=0).pretrained_cfg or {}
    size = cfg.get("input_size") or (3, 224, 224)
    return int(size[-1])


def embed_foreign(
    data_dir: str | Path,
    out: str | Path,
    *,
    image_model: str,
    image_weights: str | Path,
    img_size: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Embed every lesion image of `data_dir` with a timm model + local weights; write `out`.

    Writes features/image (the model's pooled features), ids, labels and raw/ metadata (for
    `probe --baseline`); no lesion/patient features and no split. Returns `out`.
    """
    data_dir, out = Path(data_dir), Path(out)
    if batch_size < 1:
        raise SlimpError(f"--batch-size must be >= 1 (got {batch_size})")
    dev = resolve_device(device)
    index = ShardIndex.open(data_dir)
    module, preprocess = build_foreign_encoder(
        image_model, weights=image_weights, img_size=img_size
    )
    module = module.to(dev)
    schema = index.schema
    raw_levels = raw_feature_levels(schema)
    pairs = [(p, j) for p in range(len(index)) for j in range(len(index.patient(p).lesions))]
    if not pairs:
        raise SlimpError(f"{data_dir}: no lesions to embed")
    class_index = {c: i for i, c in enumerate(schema.classes)}
    manifest = data_dir / "manifest.json"
    weights_sha = sha256_file(Path(image_weights))
    config = {
        "foreign": True,
        "model": {
            "image_model": image_model,
            "img_size": preprocess.img_size,
            "image_weights": str(image_weights),
        },
        "variant": "image",
        "image_only": True,
        "checkpoint": None,
        "checkpoint_sha256": weights_sha,
        "image_weights_sha256": weights_sha,
        "preprocess": preprocess.to_dict(),
        "data": str(data_dir),
        "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
        "seen_in_training": False,
    }
    loader = torch.utils.data.DataLoader(
        LesionImages(data_dir, pairs, preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
    )
    use_amp = dev.type == "cuda"
    official = has_official_split(data_dir)
    writer = None
    try:
        with torch.no_grad():
            start = 0
            for images in loader:
                chunk = pairs[start : start + len(images)]
                start += len(images)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    feats = module(
                        to_model_input(images.to(dev), preprocess)
                    )  # uint8 -> normalised here
                if feats.ndim != 2:
                    raise SlimpError(
                        f"--image-model {image_model}: output of shape {tuple(feats.shape)} is "
                        "not one pooled vector per image"
                    )
                if writer is None:
                    dim = feats.shape[1]
                    writer = FeatureStoreWriter(
                        out,
                        n=len(pairs),
                        dims={"image": dim},
                        config=config,
                        schema=schema.to_dict(),
                        classes=schema.classes,
                        variant="image",
                        raw_columns={k: raw_columns(v) for k, v in raw_levels.items()},
                        official_split=official,
                        overwrite=overwrite,
                    )
                recs = [index.patient(p) for p, _ in chunk]
                lesions = [rec.lesions[j] for rec, (_, j) in zip(recs, chunk)]
                rows = {
                    "lesion": [les["fields"] for les in lesions],
                    "patient": [patient_record(rec.fields, rec.derived) for rec in recs],
                }
                writer.append(
                    lesion_id=[les["lesion_id"] for les in lesions],
                    patient_id=[rec.patient_id for rec in recs],
                    label=[class_index.get(les.get("label"), -1) for les in lesions],
                    malignant=[int(les.get("malignant", -1)) for les in lesions],
                    features={"image": feats.float().cpu().numpy()},
                    raw={k: encode_raw(v, rows[k]) for k, v in raw_levels.items()},
                    official_split=[les.get("official_split") for les in lesions]
                    if official
                    else None,
                )
                if progress is not None:
                    progress(start, len(pairs))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    writer.close()
    return out
