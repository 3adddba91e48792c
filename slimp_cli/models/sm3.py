"""SM3 model (papers/sm3_paper.txt, Wang et al.): a dermoscopic and a clinical image branch.

One module serves both pre-training stages and evaluation, so a run dir of either stage loads
through `runs.load_run` like any SLIMP run:
- branches: two timm image encoders of the same architecture with separate weights (paper
  default ResNet-50; `derm_encoder` reads dermoscopic images, `clinic_encoder` clinical ones);
- stage 1, multi-modality SSL (Sec. III-D): a SimCLR projection head per branch (L_derm,
  L_clinic) and the cross-modal head(s) of the fusion strategy (Table II): `sep_sep` one head
  per modality (the paper's), `sep_shared` one head for both, `concat` one head over the
  concatenated features;
- stage 2, multi-label SSL (Sec. III-E): label-specific projections p_k of the concatenated
  branch features (one per label: DIAG and the seven criteria), the label-relation module W (one
  Transformer encoder layer across the 8 label tokens: 1 head, FFN 128, dropout 0.1) and the
  classification heads q_k, whose rows are set to label k's k-means centroids every epoch
  (`set_prototypes`), so the pseudo-labels' arbitrary numbering never has to be learnt.
`set_stage` says which stage trains (what requires grad); the branches are frozen in stage 2.

The model reads *cases*: a lesion's dermoscopic and clinical image (either may be missing). Its
`inputs` (`Sm3Inputs`) tell the training data and `embed` so; the feature levels it writes:
`derm`, `clinic` (pooled branch features; zeros where the case has no image of that modality),
`image` (their concatenation: the paper's inference features, Fig. 4), `derm_mm`/`clinic_mm`
(the cross-modal embeddings, for pair matching; not with `concat`) and, after stage 2, `labels`
(the 8 relation-refined label embeddings W(p_k(image)), concatenated: what the paper's
inference classifier, initialised from the SM3 weights (Sec. III-F), reads; Table II's MLSSL
rows are probed on this level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import SlimpError
from ..data.transforms import Preprocess, model_mean_std
from .config import ModelConfig
from .image import create_image_encoder

# The 8 labels of the multi-label stage and their numbers of classes (Derm7pt's grouped
# classes, Kawahara et al. 2019): the k-means K of each label's pseudo-labels.
LABELS = ("DIAG", "PN", "BWV", "VS", "PIG", "STR", "DaG", "RS")
LABEL_SIZES = (5, 3, 2, 3, 3, 3, 3, 2)
MODALITIES = ("dermoscopic", "clinical")  # lesions.json `modality` of each branch's images
STAGES = ("multimodal", "multilabel")
# Label-relation module (paper Sec. IV-A): one Transformer encoder layer.
RELATION_HEADS = 1
RELATION_FFN = 128
RELATION_DROPOUT = 0.1


@dataclass(frozen=True)
class Sm3Inputs:
    """What an SM3 model reads: cases (a lesion's images by modality), no metadata encoder.

    Picklable, like `MetadataInputs`: the training data and `embed` ask it, not the model.
    """

    fusion: str
    multilabel: bool = False  # the model went through stage 2 (its label embeddings are trained)

    unit = "case"  # one training item / store row per lesion, not per image
    variant = "sm3"
    modalities = MODALITIES
    two_views = True

    @property
    def levels(self) -> tuple[str, ...]:
        levels = ("image", "derm", "clinic")
        if self.fusion != "concat":
            levels += ("derm_mm", "clinic_mm")
        return levels + (("labels",) if self.multilabel else ())

    def lesion_tab(self, patient_records, lesion_records):
        return None

    def patient_tab(self, patient_records):
        return None


def projection_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """SimCLR's MLP projection head (Linear -> ReLU -> Linear)."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim))


def _rows(mask: torch.Tensor) -> torch.Tensor:
    """For a [B] bool mask: each case's row among the True ones (-1 where False)."""
    return torch.where(mask, torch.cumsum(mask.long(), 0) - 1, torch.full_like(mask.long(), -1))


class Sm3Model(nn.Module):
    """SM3's two branches, stage-1 heads and stage-2 label modules (see the module docstring).

    Shape (forward, stage "multimodal"): batch `derm1`, `derm2` [n_d, 3, S, S] (two views of the
    cases with a dermoscopic image), `clinic1`, `clinic2` [n_c, 3, S, S], `has_derm`,
    `has_clinic` [B] bool -> `derm1`, `derm2` [n_d, P], `clinic1`, `clinic2` [n_c, P], the
    cross-modal embeddings of the n_p cases with both images (`cross_anchor`, `cross_key1`,
    `cross_key2` [n_p, P]; concat: `cross1`, `cross2` [n_p, P]) and `unpaired` (B - n_p).
    Stage "multilabel": batch `derm` [n_d, 3, S, S], `clinic` [n_c, ...], `has_derm`,
    `has_clinic` -> `logits` [B, 8, 5] (each label embedding times its head's rows, the unit
    centroids; -inf past K_k) and `embeddings` [B, 8, label_dim] (what the memory bank keeps).

    Examples:
        >>> cfg = ModelConfig(variant="sm3", image_model="resnet_test", img_size=32, proj_dim=8,
        ...                   label_dim=16)
        >>> model = Sm3Model(config=cfg)
        >>> x = torch.zeros(2, 3, 32, 32)
        >>> out = model({"derm1": x, "derm2": x, "clinic1": x[:1], "clinic2": x[:1],
        ...              "has_derm": torch.tensor([True, True]),
        ...              "has_clinic": torch.tensor([False, True])})
        >>> out["derm1"].shape, out["cross_anchor"].shape, int(out["unpaired"])
        (torch.Size([2, 8]), torch.Size([1, 8]), 1)
    """

    def __init__(self, *, config: ModelConfig, load_image_weights: bool = True) -> None:
        super().__init__()
        if config.variant != "sm3":
            raise SlimpError(f"Sm3Model needs variant 'sm3', got '{config.variant}'")
        weights = config.image_weights if load_image_weights else None
        kw = dict(
            img_size=config.img_size, weights=weights, allow_cnn=True, cnn_stem=config.cnn_stem
        )
        self.derm_encoder, feature_dim = create_image_encoder(config.image_model, **kw)
        self.clinic_encoder, _ = create_image_encoder(config.image_model, **kw)
        self.config = config.replace(embed_dim=config.embed_dim or feature_dim)
        self.variant = "sm3"
        self.fusion = config.fusion
        self.image_dim = feature_dim
        mean, std = model_mean_std(self.derm_encoder)
        self.preprocess = Preprocess(img_size=config.img_size, mean=mean, std=std)
        P, L = config.proj_dim, config.label_dim
        self.derm_head = projection_head(feature_dim, P)
        self.clinic_head = projection_head(feature_dim, P)
        if self.fusion == "sep_sep":
            self.cross_derm = projection_head(feature_dim, P)
            self.cross_clinic = projection_head(feature_dim, P)
        elif self.fusion == "sep_shared":
            self.cross_shared = projection_head(feature_dim, P)
        else:
            self.cross_concat = projection_head(2 * feature_dim, P)
        self.label_proj = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * feature_dim, L), nn.ReLU()) for _ in LABELS
        )
        self.relation = nn.TransformerEncoderLayer(
            d_model=L,
            nhead=RELATION_HEADS,
            dim_feedforward=RELATION_FFN,
            dropout=RELATION_DROPOUT,
            batch_first=True,
        )
        self.prototypes = nn.ModuleList(nn.Linear(L, k, bias=False) for k in LABEL_SIZES)
        # True once stage 2 has trained the label modules (saved with the weights, so a loaded
        # stage-2 model writes its label embeddings to the store)
        self.register_buffer("multilabel_trained", torch.tensor(False))
        self.stage = "multimodal"
        self.set_stage("multimodal")

    # -- what the rest of slimp asks --------------------------------------------------------------
    @property
    def inputs(self) -> Sm3Inputs:
        return Sm3Inputs(self.fusion, bool(self.multilabel_trained))

    @property
    def feature_dims(self) -> dict[str, int]:
        dims = {"image": 2 * self.image_dim, "derm": self.image_dim, "clinic": self.image_dim}
        if self.fusion != "concat":
            dims.update(derm_mm=self.config.proj_dim, clinic_mm=self.config.proj_dim)
        dims["labels"] = len(LABELS) * self.config.label_dim
        return dims

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The modules stage `stage` trains."""
        if stage == "multimodal":
            cross = [
                getattr(self, n)
                for n in ("cross_derm", "cross_clinic", "cross_shared", "cross_concat")
                if hasattr(self, n)
            ]
            return [
                self.derm_encoder,
                self.clinic_encoder,
                self.derm_head,
                self.clinic_head,
                *cross,
            ]
        if stage == "multilabel":  # the branches stay frozen (the official code's default)
            return [self.label_proj, self.relation, self.prototypes]
        raise SlimpError(f"unknown SM3 stage '{stage}'; choose one of {', '.join(STAGES)}")

    def set_stage(self, stage: str) -> list[nn.Parameter]:
        """Make exactly `stage`'s modules trainable; returns their parameters."""
        modules = self.stage_modules(stage)
        self.requires_grad_(False)
        for m in modules:
            m.requires_grad_(True)
        self.stage = stage
        return [p for m in modules for p in m.parameters()]

    def set_trainable(self, tune: str) -> list[nn.Parameter]:
        raise SlimpError("adapt does not apply to SM3 models (they have no metadata encoders)")

    # -- encoders -----------------------------------------------------------------------------
    def branch_features(
        self,
        derm: torch.Tensor,
        clinic: torch.Tensor,
        has_derm: torch.Tensor,
        has_clinic: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features of each case's images, zeros where the case lacks the modality.

        Shape: derm [n_d, 3, S, S], clinic [n_c, 3, S, S], has_* [B] -> ([B, F], [B, F])
        """
        out = []
        for encoder, images, has in (
            (self.derm_encoder, derm, has_derm),
            (self.clinic_encoder, clinic, has_clinic),
        ):
            has = has.to(images.device).bool()
            feats = images.new_zeros(has.shape[0], self.image_dim)
            if images.shape[0]:
                feats = feats.index_put((has.nonzero().flatten(),), encoder(images).to(feats.dtype))
            out.append(feats)
        return out[0], out[1]

    def cross_embeddings(
        self, derm_features: torch.Tensor, clinic_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each modality's embedding in the shared cross-modal space (not with `concat`)."""
        if self.fusion == "sep_sep":
            return self.cross_derm(derm_features), self.cross_clinic(clinic_features)
        if self.fusion == "sep_shared":
            return self.cross_shared(derm_features), self.cross_shared(clinic_features)
        raise SlimpError("the concat fusion has no per-modality cross-modal embedding")

    def label_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """Relation-refined label embeddings of concatenated branch features: W(p_1, ..., p_8).

        Not L2-normalised, as in the official run (mlc_train.py without `--l2-norm`): the
        scores are embedding . unit centroid / tau with tau 1.0, so the embedding's norm (the
        relation layer's LayerNorm output, about sqrt(label_dim)) sets their sharpness.

        Shape: features [B, 2F] -> [B, 8, label_dim]
        """
        tokens = torch.stack([proj(features) for proj in self.label_proj], dim=1)
        return self.relation(tokens)

    def label_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Each label token's scores to its own classification head. [B, 8, D] -> [B, 8, 5]."""
        logits = embeddings.new_full(
            (embeddings.shape[0], len(LABELS), max(LABEL_SIZES)), float("-inf")
        )
        for k, head in enumerate(self.prototypes):
            logits[:, k, : LABEL_SIZES[k]] = head(embeddings[:, k])
        return logits

    @torch.no_grad()
    def set_prototypes(self, centroids: list[torch.Tensor]) -> None:
        """q_k's rows := label k's k-means centroids [K_k, label_dim] (each epoch of stage 2)."""
        for head, c in zip(self.prototypes, centroids, strict=True):
            head.weight.copy_(c.to(head.weight))

    def encode_cases(
        self,
        derm: torch.Tensor,
        clinic: torch.Tensor,
        has_derm: torch.Tensor,
        has_clinic: torch.Tensor,
        levels: tuple[str, ...],
    ) -> dict[str, torch.Tensor]:
        """The store features of B cases (`embed`): each level of `levels`, [B, D_level]."""
        fd, fc = self.branch_features(derm, clinic, has_derm, has_clinic)
        out = {"derm": fd, "clinic": fc, "image": torch.cat([fd, fc], dim=1)}
        if "derm_mm" in levels or "clinic_mm" in levels:
            md, mc = self.cross_embeddings(fd, fc)
            mask = lambda has, x: x * has.to(x.device).unsqueeze(1).to(x.dtype)  # noqa: E731
            out["derm_mm"], out["clinic_mm"] = mask(has_derm, md), mask(has_clinic, mc)
        if "labels" in levels:
            out["labels"] = self.label_embeddings(out["image"]).flatten(1)
        return {k: out[k] for k in levels}

    # -- training forward -----------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.stage == "multilabel":
            fd, fc = self.branch_features(
                batch["derm"], batch["clinic"], batch["has_derm"], batch["has_clinic"]
            )
            emb = self.label_embeddings(torch.cat([fd, fc], dim=1))
            return {"logits": self.label_logits(emb), "embeddings": emb}
        has_d, has_c = batch["has_derm"].bool(), batch["has_clinic"].bool()
        out: dict[str, torch.Tensor] = {}
        feats = {}
        for name, encoder, head in (
            ("derm", self.derm_encoder, self.derm_head),
            ("clinic", self.clinic_encoder, self.clinic_head),
        ):
            v1, v2 = batch[f"{name}1"], batch[f"{name}2"]
            n = v1.shape[0]
            # run even on an empty batch: under torchrun this rank still takes part in the
            # global batch norm and DDP's gradient reduction of the branch and its head
            f = encoder(torch.cat([v1, v2]))
            feats[name] = (f[:n], f[n:])
            z = head(f)
            out[f"{name}1"], out[f"{name}2"] = z[:n], z[n:]
        both = has_d & has_c
        di, ci = _rows(has_d)[both], _rows(has_c)[both]
        d1, d2 = (x[di.to(x.device)] for x in feats["derm"])
        c1, c2 = (x[ci.to(x.device)] for x in feats["clinic"])
        if self.fusion == "concat":
            out["cross1"] = self.cross_concat(torch.cat([d1, c1], dim=1))
            out["cross2"] = self.cross_concat(torch.cat([d2, c2], dim=1))
        else:
            out["cross_anchor"], out["cross_key1"] = self.cross_embeddings(d1, c1)
            _, out["cross_key2"] = self.cross_embeddings(d2[:0], c2)
        out["unpaired"] = (~both).sum()
        return out
