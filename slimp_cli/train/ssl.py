"""`--image-ssl-weight`: an image self-supervision term beside SLIMP's loss (SLIP, Mu et al. 2022).

SLIP ("Self-supervision meets Language-Image Pre-training") adds SimCLR to CLIP: the image
encoder also has to tell each image's two strongly augmented views apart from every other
image's, through a projection head of its own. Here the nested (or flat) loss keeps its own
view of each image (`images`, augmented or not as `--augment` says) and the data adds two
SimCLR views (`ssl_images1`, `ssl_images2`, train/data.py); `SslNet` runs the image encoder on
them and an `ImageSslHead`; `losses.add_image_ssl` gives loss = nested + W * NT-Xent.

The head exists only while training: it is saved in each checkpoint's `extra` (so `--resume`
continues exactly), never in the model's state dict, so `embed`, `probe`, `adapt` and `export`
read the run as any other. `adapt` with W > 0 starts a new head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.errors import SlimpError
from ..data.transforms import to_model_input

HEAD_STATE = "image_ssl_head"  # its key in a checkpoint's `extra`
# The head's own initialisation stream: drawing it leaves the global RNG (model init order,
# dropout) as it is without the SSL term.
HEAD_SEED_OFFSET = 0x551


class ImageSslHead(nn.Module):
    """The SSL projection head: Linear(F, F) -> ReLU -> Linear(F, P) on pooled image features.

    NOTE[DIFF]: SLIP's head is a 3-layer MLP (4096 wide, BatchNorm, 256 out); this is the
    2-layer head of slimp's own SimCLR baseline (models/slimp.py), so that the image-only row
    and the SSL term use the same SimCLR, and no BatchNorm couples the rows of a batch.

    Shape:
        features [L, F] -> [L, P].
    """

    def __init__(self, *, in_dim: int, out_dim: int) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SlimpError(f"ImageSslHead {name} must be an integer >= 1, got {v!r}")
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class SslNet(nn.Module):
    """What trains with `--image-ssl-weight`: the SLIMP model plus the SSL head.

    `forward(batch)` returns the model's outputs plus `ssl_view1`, `ssl_view2` [L, P] (the
    head's outputs for the two SimCLR views) and `ssl_groups` [L] (lesion ids, when the batch
    has them). `model` keeps its own parameter names inside (`model.*`, `head.*`).
    """

    def __init__(self, *, model: nn.Module, head: ImageSslHead) -> None:
        super().__init__()
        self.model = model
        self.head = head

    @property
    def variant(self) -> str:
        return self.model.variant

    @property
    def preprocess(self):
        return self.model.preprocess

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = dict(self.model(batch))
        pre = self.model.preprocess
        one = to_model_input(batch["ssl_images1"], pre)
        two = to_model_input(batch["ssl_images2"], pre)
        # one encoder pass over both views (as the SimCLR baseline does)
        z = self.head(self.model.image_encoder(torch.cat([one, two])))
        out["ssl_view1"], out["ssl_view2"] = z.split(one.shape[0])
        if "lesion_group" in batch:
            out["ssl_groups"] = batch["lesion_group"].to(z.device)
        return out


def check_ssl_variant(variant: str) -> None:
    """Only SLIMP's metadata variants take the term: the image variant is SimCLR already."""
    if variant not in ("nested", "flat"):
        raise SlimpError(
            f"--image-ssl-weight adds image self-supervision to the nested and flat losses; "
            f"the {variant} variant "
            + ("is SimCLR already" if variant == "image" else "has no such term")
        )


def build_ssl_net(model: nn.Module, *, seed: int) -> SslNet:
    """`model` with a new SSL head (P = the model's embedding size), drawn from its own stream."""
    check_ssl_variant(getattr(model, "variant", None))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + HEAD_SEED_OFFSET)
        head = ImageSslHead(in_dim=model.image_dim, out_dim=model.config.embed_dim)
    device = next(model.parameters()).device
    return SslNet(model=model, head=head.to(device))
