"""SLIMP model: image encoder + TRACE lesion/patient encoders + phenotype layer (paper Sec. 3.1).

Variants (ModelConfig.variant):
- `nested`: w = image projection, h = lesion TRACE projection, x = patient TRACE projection
  (over `schema.patient_all`: patient + derived features such as n_lesions), and the patient's
  lesion phenotype z_p = Linear(2D, D)(mean over its lesions of concat(w, h)).
- `flat`: one TRACE encoder (`lesion_encoder`) over concat(patient, lesion) metadata, patient
  values repeated per lesion; one InfoNCE image <-> metadata.
- `image`: SimCLR baseline: the image encoder + an MLP projection head on two augmented views.

Which features each tabular encoder reads is fixed at build time and kept on the model:
`model.lesion_features` (flat: `schema.flat_features`, i.e. patient_all + lesion features, so the
records given to `encode_tabular` must hold the patient's fields merged into each lesion's) and
`model.patient_features` (nested only, else None). Encode inputs with exactly these lists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.errors import SlimpError
from ..data.schema import ResolvedSchema, TabularBatch, cardinalities, n_numerical
from ..data.transforms import Preprocess, model_mean_std, to_model_input
from .config import ModelConfig
from .image import create_image_encoder, patch_embedding_parameters
from .inputs import MetadataInputs, tabular_feature_lists
from .tabular import TraceEncoder


def scatter_to_patients(
    values: torch.Tensor, patient_index: torch.Tensor, n_patients: int, n_max: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad per-lesion rows into a per-patient grid, in any lesion order.

    A patient's lesions keep their relative order; N = the largest lesion count in the batch
    (pass it as `n_max` when known on the host, to avoid a device sync).

    Shape:
        values [L, D], patient_index [L] long in 0..n_patients-1
        -> padded [n_patients, N, D] (zeros where padded), mask [n_patients, N] bool

    Examples:
        >>> v = torch.arange(3.0).unsqueeze(1)
        >>> padded, mask = scatter_to_patients(v, torch.tensor([1, 0, 1]), 2)
        >>> padded.squeeze(-1).tolist(), mask.tolist()
        ([[1.0, 0.0], [0.0, 2.0]], [[True, False], [True, True]])
    """
    counts = torch.bincount(patient_index, minlength=n_patients)
    if counts.numel() > n_patients:
        raise ValueError(f"patient_index has values >= the {n_patients} patients of the batch")
    if n_max is None:
        n_max = int(counts.max()) if counts.numel() else 0
    order = torch.argsort(patient_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(patient_index)
    sorted_patients = patient_index[order]
    position[order] = torch.arange(len(order), device=order.device) - starts[sorted_patients]
    padded = values.new_zeros(n_patients, n_max, *values.shape[1:])
    padded = padded.index_put((patient_index, position), values)
    mask = torch.zeros(n_patients, n_max, dtype=torch.bool, device=values.device)
    mask[patient_index, position] = True
    return padded, mask


class SlimpModel(nn.Module):
    """The SLIMP model of one variant, built for one resolved schema.

    Prefer `build_model(cfg, schema)`. `config` is the config with `embed_dim`/`tab_dim`
    resolved (ints), so `ModelConfig.from_dict(model.config.to_dict())` rebuilds the same model.

    Shape (forward): see `forward`. Encoders usable alone:
        encode_image(images [L, 3, H, W]) -> [L, D]   (image variant: backbone features [L, F])
        encode_lesion(tab over L lesions) -> [L, D]
        encode_patient(tab over B patients) -> [B, D]  (nested only)
        phenotype(w [L, D], h [L, D]) -> [L, D]         (nested only; per-lesion z)

    Examples:
        >>> cfg = ModelConfig(variant="image", image_model="vit_test", img_size=32)
        >>> model = build_model(cfg, None)
        >>> out = model({"images": torch.zeros(2, 3, 32, 32), "images2": torch.zeros(2, 3, 32, 32)})
        >>> out["view1"].shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        *,
        config: ModelConfig,
        schema: ResolvedSchema | None,
        load_image_weights: bool = True,
    ) -> None:
        super().__init__()
        lesion_features, patient_features = tabular_feature_lists(config.variant, schema)
        weights = config.image_weights if load_image_weights else None
        self.image_encoder, feature_dim = create_image_encoder(
            config.image_model, img_size=config.img_size, weights=weights
        )
        config = config.replace(
            embed_dim=config.embed_dim or feature_dim, tab_dim=config.tab_dim or feature_dim
        )
        self.config = config
        self.variant = config.variant
        self.image_dim = feature_dim
        self.lesion_features = lesion_features
        self.patient_features = patient_features
        mean, std = model_mean_std(self.image_encoder)
        # Image size and mean/std this model reads images with (recorded in config.json).
        self.preprocess = Preprocess(img_size=config.img_size, mean=mean, std=std)
        D, d = config.embed_dim, config.tab_dim
        if self.variant == "image":
            # SimCLR projection head (Linear -> ReLU -> Linear); dropped at evaluation time.
            self.projection_head = nn.Sequential(
                nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, D)
            )
            return
        self.image_proj = nn.Linear(feature_dim, D)
        self.lesion_encoder = self._trace(lesion_features)
        self.lesion_proj = nn.Linear(d, D)
        if self.variant == "nested":
            self.patient_encoder = self._trace(patient_features)
            self.patient_proj = nn.Linear(d, D)
            self.phenotype_layer = nn.Linear(2 * D, D)

    def _trace(self, features: list[dict]) -> TraceEncoder:
        c = self.config
        return TraceEncoder(
            cardinalities=cardinalities(features),
            n_numerical=n_numerical(features),
            d=c.tab_dim,
            n_layers=c.tab_layers,
            n_heads=c.tab_heads,
            ffn_mult=c.tab_ffn_mult,
            dropout=c.tab_dropout,
        )

    @property
    def inputs(self) -> MetadataInputs:
        """How records feed this model's tabular encoders (picklable; used by data and embed)."""
        return MetadataInputs(self.variant, self.lesion_features, self.patient_features)

    @property
    def feature_dims(self) -> dict[str, int]:
        """Width of each feature `embed` stores: image (+ lesion, + patient)."""
        if self.variant == "image":
            return {"image": self.image_dim}
        dims = {"image": self.config.embed_dim, "lesion": self.config.embed_dim}
        if self.variant == "nested":
            dims["patient"] = self.config.embed_dim
        return dims

    # -- encoders -------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """w = projection of the pooled ViT features; image variant: the pooled features.

        The SimCLR baseline is evaluated on the backbone's features, not its head's (standard
        SimCLR practice), so `encode_image` skips the projection head there.
        """
        features = self.image_encoder(to_model_input(images, self.preprocess))
        return features if self.variant == "image" else self.image_proj(features)

    def encode_lesion(self, tab: TabularBatch) -> torch.Tensor:
        """h over L lesions (flat: tab encoded with `self.lesion_features` = patient + lesion)."""
        self._require("lesion_encoder", "lesion metadata")
        return self.lesion_proj(self.lesion_encoder(*tab))

    def encode_patient(self, tab: TabularBatch) -> torch.Tensor:
        """x over B patients (tab encoded with `self.patient_features`)."""
        self._require("patient_encoder", "patient metadata")
        return self.patient_proj(self.patient_encoder(*tab))

    def phenotype(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Per-lesion phenotype Linear(concat(w, h)); averaging it over a patient's lesions gives
        z_p (the layer is affine, so mean-then-Linear = Linear-then-mean)."""
        self._require("phenotype_layer", "a phenotype layer")
        return self.phenotype_layer(torch.cat([w, h], dim=-1))

    def _require(self, name: str, what: str) -> None:
        if getattr(self, name, None) is None:
            raise SlimpError(f"this {self.variant} model has no {what} encoder")

    # -- training forward -----------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Outputs keyed by the loss's arguments (`losses.compute_loss(variant, outputs)`).

        Shape:
            batch: images [L, 3, H, W]; patient_index [L] long (0..B-1, any order);
                   lesion_tab (TabularBatch, L rows); patient_tab (TabularBatch, B rows);
                   images2 [L, 3, H, W] (image variant only).
            nested -> image [B, N, D], lesion [B, N, D], mask [B, N] bool, phenotype [B, D],
                      patient [B, D]  (N = most lesions of one patient in the batch)
                      (+ groups [B, N] when the batch has lesion_group [L])
            flat   -> image [L, D], tabular [L, D] (+ groups [L])
            image  -> view1 [L, D], view2 [L, D]
        """
        images = to_model_input(batch["images"], self.preprocess)  # uint8 batches normalised here
        if self.variant == "image":
            views = torch.cat([images, to_model_input(batch["images2"], self.preprocess)])
            both = self.projection_head(self.image_encoder(views))
            view1, view2 = both.split(images.shape[0])
            return {"view1": view1, "view2": view2}
        w = self.encode_image(images)
        h = self.encode_lesion(batch["lesion_tab"])
        groups = batch.get("lesion_group")  # [L] lesion ids: twins are not negatives
        if self.variant == "flat":
            out = {"image": w, "tabular": h}
            if groups is not None:
                out["groups"] = groups
            return out
        patient_tab = batch["patient_tab"]
        x = self.encode_patient(patient_tab)
        n_patients = x.shape[0]
        patient_index = batch["patient_index"].to(w.device).long()
        counts = torch.bincount(patient_index, minlength=n_patients)
        # The check syncs with the device and breaks a torch.compile graph: eager mode only
        # (collate always covers every patient, so compiled training loses nothing).
        if not torch.compiler.is_compiling() and (
            counts.numel() != n_patients or bool((counts == 0).any())
        ):
            raise ValueError(
                f"patient_index must cover every one of the {n_patients} patients with values "
                f"in 0..{n_patients - 1}"
            )
        wh = torch.cat([w, h.to(w.dtype)], dim=-1)
        sums = wh.new_zeros(n_patients, wh.shape[-1]).index_add(0, patient_index, wh)
        z = self.phenotype_layer(sums / counts.unsqueeze(1).to(sums.dtype))
        n_max = batch.get("max_lesions")
        image, mask = scatter_to_patients(w, patient_index, n_patients, n_max)
        lesion, _ = scatter_to_patients(h, patient_index, n_patients, n_max)
        out = {"image": image, "lesion": lesion, "mask": mask, "phenotype": z, "patient": x}
        if groups is not None:
            out["groups"], _ = scatter_to_patients(
                groups.to(w.device).unsqueeze(1), patient_index, n_patients, n_max
            )
            out["groups"] = out["groups"].squeeze(-1)
        return out

    # -- continual pre-training -----------------------------------------------------------------
    def embedding_parameters(self) -> list[nn.Parameter]:
        """What `adapt --tune embeddings` trains (paper App. D): the ViT patch embedding and the
        TRACE encoders' input embeddings (categorical tables, numerical MLP, CLS token). An
        image-only model has no tabular inputs: its patch embedding alone."""
        params = list(patch_embedding_parameters(self.image_encoder))
        for name in ("lesion_encoder", "patient_encoder"):
            encoder = getattr(self, name, None)
            if encoder is not None:
                params += encoder.input_parameters()
        return params

    def set_trainable(self, tune: str) -> list[nn.Parameter]:
        """Freeze all but the embeddings (`tune="embeddings"`) or nothing (`"all"`); returns the
        trainable parameters, for the optimiser."""
        if tune == "all":
            self.requires_grad_(True)
            return list(self.parameters())
        if tune == "embeddings":
            self.requires_grad_(False)
            params = self.embedding_parameters()
            for p in params:
                p.requires_grad_(True)
            return params
        raise SlimpError(f"unknown --tune '{tune}'; choose embeddings or all")


def build_model(
    cfg: ModelConfig, schema: ResolvedSchema | None, *, load_image_weights: bool = True
) -> SlimpModel:
    """Build a SLIMP model of `cfg.variant` for `schema` (None is fine for `image`).

    `load_image_weights=False` skips `cfg.image_weights`: use it when rebuilding a model whose
    weights come from a slimp checkpoint (the original weights file need not exist any more).
    Raises SlimpError for an unknown image model, a missing weights file, or a variant the
    schema cannot feed (nested without patient features: the caller decides whether to fall
    back to flat).
    """
    if cfg.variant == "sm3":  # SM3: two image branches, no metadata encoder
        from .sm3 import Sm3Model

        return Sm3Model(config=cfg, load_image_weights=load_image_weights)
    return SlimpModel(config=cfg, schema=schema, load_image_weights=load_image_weights)


def replace_tabular_inputs(model: SlimpModel, new_schema: ResolvedSchema) -> SlimpModel:
    """Continual pre-training (`adapt`): new tabular input layers for a target schema, in place.

    Kept: the image encoder, the TRACE transformers and CLS tokens, the projections and the
    phenotype layer (tokens are d-dimensional whatever the columns, so the transformers are
    shared across schemas). New (freshly initialised): each TRACE encoder's categorical tables
    and numerical MLP, built for the target's columns.

    - nested model, target with patient features: stays nested (lesion inputs over the target's
      lesion features, patient inputs over its patient + derived features).
    - nested model, target without patient features: becomes `flat` (DESIGN.md): the lesion
      TRACE encoder, with new inputs over the target's lesion features, is the single tabular
      encoder; the patient encoder and phenotype layer are dropped. `model.config.variant` is
      updated, so `build_model(model.config, new_schema)` rebuilds the adapted architecture.
    - flat model: stays flat, new inputs over the target's `flat_features`.
    Returns the model. Raises SlimpError for image-only models or a target without metadata.
    """
    if model.variant == "image":
        raise SlimpError("an image-only (SimCLR) model has no tabular inputs to adapt")
    if model.variant == "sm3":
        raise SlimpError("an SM3 model has no tabular inputs to adapt; adapt is SLIMP's")
    variant = "nested" if model.variant == "nested" and new_schema.has_patient_features else "flat"
    lesion_features, patient_features = tabular_feature_lists(variant, new_schema)
    model.lesion_encoder.replace_inputs(
        cardinalities=cardinalities(lesion_features), n_numerical=n_numerical(lesion_features)
    )
    if variant == "nested":
        model.patient_encoder.replace_inputs(
            cardinalities=cardinalities(patient_features), n_numerical=n_numerical(patient_features)
        )
    elif model.variant == "nested":
        del model.patient_encoder, model.patient_proj, model.phenotype_layer
    model.variant = variant
    model.config = model.config.replace(variant=variant)
    model.lesion_features, model.patient_features = lesion_features, patient_features
    return model
