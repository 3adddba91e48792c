"""SM3 behind `pretrain --method sm3`: its recipes, its two stages and stage 2's pseudo-labels.

SM3 (papers/sm3_paper.txt) uses the same run dir, checkpoints, training loop, sampler and store
as SLIMP; this module holds only what differs:
- recipes (`RECIPES`; docs/method.md "SM3"): ResNet-50 branches at 224 px; stage 1 from
  ImageNet weights (`--image-weights`) follows the paper (Sec. IV-A-1: batch 96, lr 1e-6, 400
  epochs, AdamW weight decay 0.01, tau 0.1); stage 1 from random weights gets slimp's
  from-scratch recipe (the paper's lr 1e-6 only fine-tunes, it does not move random weights);
  stage 2 the paper's (batch 256, lr 1e-4, 150 epochs) with the official code's tau 1.0. Both
  stage-1 recipes augment each view SimCLR's way (`transforms.simclr_view`, Sec. IV-A-1): the
  standard recipe with ImageNet weights, the small-image one with SM3's crop from random
  weights ("mild"), and start at the peak rate (no warm-up, as the official code). ResNet
  branches from random weights at inputs of at most 64 px also get SimCLR's small-image stem
  (`ModelConfig.cnn_stem`, `models.image.default_cnn_stem`). Options given on the command line
  override any value; the recipe is announced in one line at the start and recorded in
  config.json (`sm3.recipe`; the stem in `model.cnn_stem`).
- the two-stage schedule: stage 1 (`--stage multimodal`, the default) trains the branches, the
  SimCLR heads and the fusion heads into its run dir; stage 2 (`--stage multilabel --init RUN1`)
  starts a second run dir from RUN1's weights, with RUN1's architecture, and trains the label
  projections, the label-relation layer and the classification heads on pseudo-labels, the
  branches frozen (the official code's default, `mlc_train.py` without
  `--finetune-backbone`). Its `embed` writes the `labels` level: the features Table II's MLSSL
  rows are probed on (Sec. III-F). Each stage resumes exactly on its own.
- stage 2's memory bank (`PseudoLabels`): every case's 8 label embeddings, filled by one pass
  before training (eval mode) and updated with each step's embeddings; at the start of every
  epoch each label's embeddings are clustered by spherical k-means (K per label: DIAG 5, PN 3,
  BWV 2, VS 3, PIG 3, STR 3, DaG 3, RS 2), seeded by (seed, epoch, label), the pseudo-labels
  are the cluster ids and label k's classification head is set to its centroids. The bank and
  the epoch's pseudo-labels are saved in every checkpoint, so `--resume` is exact.
- torchrun: the loss is the global batch's (`losses.sm3.sm3_loss(gather=...)`), batch norm
  runs over the global batch (`distributed.sync_batch_norm`) and stage 2's bank is filled and
  updated from every rank's cases, so K processes train as one process on K times the batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import SlimpError
from ..models.config import ModelConfig
from ..models.image import default_cnn_stem
from ..models.kmeans import pseudo_labels
from ..models.runs import load_checkpoint, read_config, resolve_checkpoint, sha256_file
from ..models.sm3 import LABEL_SIZES, MODALITIES
from . import distributed as D
from .batches import batch_to
from .data import CaseDataset, case_index, collate_cases
from .loop import notice
from .train_config import TrainConfig

SM3_MODEL_DEFAULTS = {"variant": "sm3", "image_model": "resnet50", "img_size": 224}
# The training recipes (docs/method.md "SM3": each value and why). Stage 1 picks "imagenet"
# when the branches start from `--image-weights`, else "scratch"; stage 2 is "multilabel".
# NOTE[DIFF]: the stage-1 recipes start at the peak rate and decay it by a cosine to 0 (no
# warm-up, as the official code, which keeps the rate constant; the paper states no schedule).
# A 5% warm-up of the 400-epoch schedule is 20 epochs: a short run (`--max-steps`) then ends
# before its rate peaks, and the acceptance run of docs/method.md stayed at chance.
RECIPES = {
    # Sec. IV-A-1 and the official run.sh: fine-tuning ImageNet ResNet-50 weights.
    "imagenet": {
        "patients_per_batch": 96,
        "lr": 1e-6,
        "epochs": 400,
        "weight_decay": 0.01,
        "temperature": 0.1,
        "augment": True,
        "augment_recipe": "simclr",
        "warmup_steps": 0,
    },
    # Random weights: the paper's recipe but for the learning rate, AdamW's usual 1e-3 for
    # contrastive training from scratch (no warm-up, then cosine to 0), and milder
    # views (transforms "mild": SM3's crop, SimCLR's small-image jitter, no blur): with the
    # standard SimCLR views the acceptance run of docs/method.md stays at chance.
    "scratch": {
        "patients_per_batch": 96,
        "lr": 1e-3,
        "epochs": 400,
        "weight_decay": 0.01,
        "temperature": 0.1,
        "augment": True,
        "augment_recipe": "mild",
        "warmup_steps": 0,
    },
    # Sec. IV-A-1 (batch 256, lr 1e-4, 150 epochs); tau 1.0 is the official run's
    # (run.sh: mlc_train.py --temperature 1), with its un-normalised label embeddings.
    "multilabel": {
        "patients_per_batch": 256,
        "lr": 1e-4,
        "epochs": 150,
        "weight_decay": 0.01,
        "temperature": 1.0,
        "augment": True,
        "augment_recipe": "light",
    },
}
RECIPE_NOTES = {
    "imagenet": "the paper's (Sec. IV-A-1), for branches started from ImageNet weights",
    "scratch": (
        "slimp's for random weights (no --image-weights; the paper's lr 1e-6 only fine-tunes "
        "ImageNet weights; docs/method.md)"
    ),
    "multilabel": "the paper's stage 2 (Sec. IV-A-1), tau 1.0 as the official code",
}


def _given(cfg, name: str, saved: dict | None, section: str):
    if isinstance(cfg, (TrainConfig, ModelConfig)):
        return getattr(cfg, name)
    if cfg and name in cfg:
        return cfg[name]
    return saved[section].get(name) if saved else None


def recipe_name(stage: str, image_weights: str | None) -> str:
    """The recipe of an SM3 stage: "multilabel", "imagenet" (stage 1 from --image-weights) or
    "scratch" (stage 1 from random weights)."""
    if stage == "multilabel":
        return "multilabel"
    return "imagenet" if image_weights else "scratch"


def sm3_defaults(train, saved: dict | None, model=None) -> tuple[dict | None, dict | None]:
    """(model defaults, train defaults) when the run is SM3, else (None, None).

    `train` / `model`: the given options (dicts or configs); the stage-1 recipe depends on
    whether `model` names `image_weights`.
    """
    if (_given(train, "method", saved, "train") or "slimp") != "sm3":
        return None, None
    stage = _given(train, "stage", saved, "train") or "multimodal"
    if stage not in ("multimodal", "multilabel"):
        return SM3_MODEL_DEFAULTS, None  # TrainConfig names the bad stage
    weights = _given(model, "image_weights", saved, "model")
    model_defaults = dict(SM3_MODEL_DEFAULTS)
    variant = _given(model, "variant", saved, "model")
    # stage 2 keeps its --init run's architecture; another --variant is refused later
    if stage == "multimodal" and variant in (None, "sm3"):
        name = _given(model, "image_model", saved, "model") or model_defaults["image_model"]
        size = _given(model, "img_size", saved, "model") or model_defaults["img_size"]
        model_defaults["cnn_stem"] = default_cnn_stem(name, size, weights)
    return model_defaults, dict(RECIPES[recipe_name(stage, weights)])


def recipe_record(model, train: TrainConfig) -> dict:
    """config.json's `sm3.recipe`: its name, its values and the ones options changed."""
    name = recipe_name(train.stage, model.config.image_weights)
    values = RECIPES[name]
    given = {k: getattr(train, k) for k in values if getattr(train, k) != values[k]}
    return {"name": name, "values": dict(values), "overridden": given}


def recipe_notice(record: dict, train: TrainConfig, info, *, cnn_stem: str) -> None:
    """One stderr line: which recipe this SM3 stage trains with, and its effective values."""
    name = record["name"]
    changed = f"; given options override {', '.join(record['overridden'])}" * bool(
        record["overridden"]
    )
    aug = train.augment_recipe if (train.augment or train.stage == "multimodal") else "none"
    notice(
        f"SM3 {train.stage}: recipe '{name}', {RECIPE_NOTES[name]}: batch "
        f"{train.patients_per_batch}, lr {train.lr:g}, {train.epochs} epochs, warm-up "
        f"{'5%' if train.warmup_steps is None else f'{train.warmup_steps} steps'} then cosine, "
        f"weight decay {train.weight_decay:g}, tau {train.temperature:g}, augmentation "
        f"{aug}, {cnn_stem} stem{changed}",
        info,
    )


def sm3_model_config(
    model_cfg: ModelConfig, given, train: TrainConfig, saved: dict | None
) -> ModelConfig:
    """The architecture of an SM3 run: variant sm3; stage 2 takes its `--init` run's."""
    if isinstance(given, dict) and given.get("variant", "sm3") != "sm3":
        raise SlimpError(
            f"--method sm3 trains its own model; --variant {given['variant']} is SLIMP's"
        )
    model_cfg = model_cfg.replace(variant="sm3")
    if train.stage != "multilabel" or saved is not None:
        return model_cfg
    if train.init is None:
        raise SlimpError(
            "--stage multilabel starts from a stage-1 run: give it with --init RUN "
            "(the --out of `slimp pretrain --method sm3`)"
        )
    init_cfg = _init_config(train.init)
    base = ModelConfig.from_dict(init_cfg["model"])
    if isinstance(given, dict):
        differ = sorted(k for k, v in given.items() if getattr(base, k, v) != v)
        if differ:
            raise SlimpError(
                f"--stage multilabel keeps the architecture of --init {train.init}; drop "
                f"{', '.join(differ)}"
            )
    return base


def _init_config(init: str) -> dict:
    ckpt, run_dir = resolve_checkpoint(init)
    cfg = (
        read_config(run_dir)
        if (run_dir / "config.json").is_file()
        else load_checkpoint(ckpt)["config"]
    )
    if (
        cfg.get("variant") != "sm3"
        or cfg.get("train", {}).get("stage", "multimodal") != "multimodal"
    ):
        raise SlimpError(f"--init {init}: not a stage-1 SM3 run (pretrain --method sm3)")
    return cfg


def prepare_sm3(
    model,
    index,
    train: TrainConfig,
    *,
    info,
    device: torch.device,
    resumed: bool,
    use: list[int] | None = None,
) -> tuple[object | None, dict]:
    """Set the model's stage, load stage 2's `--init` weights, say how many cases are unpaired.

    `use`: the training patients (held-out patients' cases are left out, as in
    `data.case_training_data`, so the memory bank's rows are the sampler's cases).
    Returns (training hooks or None, what config.json records about SM3). A fresh run (not
    `resumed`) announces its recipe in one stderr line.
    """
    if train.stage == "multimodal" and not train.augment and not resumed:
        raise SlimpError(
            "SM3 stage 1 contrasts two augmented views of each image: drop --no-augment "
            "(augment: false); --augment-recipe chooses the augmentation"
        )
    cases = case_index(index, MODALITIES)
    if use is not None:
        allowed = set(use)
        cases = [c for c in cases if c.patient in allowed]
    n_derm = sum(c.image("dermoscopic") is not None for c in cases)
    n_clinic = sum(c.image("clinical") is not None for c in cases)
    paired = sum(len(c.images) == 2 for c in cases)
    record = {
        "stage": train.stage,
        "fusion": model.fusion,
        "cases": len(cases),
        "cases_with": {"dermoscopic": n_derm, "clinical": n_clinic},
        "paired_cases": paired,
        "unpaired_cases": len(cases) - paired,
        "recipe": recipe_record(model, train),
    }
    if not resumed:
        recipe_notice(record["recipe"], train, info, cnn_stem=model.config.cnn_stem)
    model.set_stage(train.stage)
    if train.stage == "multimodal":
        if paired < len(cases):
            notice(
                f"{len(cases) - paired} of {len(cases)} cases lack a clinical or dermoscopic image "
                f"({len(cases) - n_clinic} without clinical, {len(cases) - n_derm} without "
                "dermoscopic): the cross-modal term skips them (metrics.jsonl 'unpaired' counts "
                "them per step)"
                + ("; no case has both, so L_mm is 0 throughout" if paired == 0 else ""),
                info,
            )
        return None, {"sm3": record}
    extra = {"sm3": record}
    if not resumed:
        ckpt, _ = resolve_checkpoint(train.init)
        state = load_checkpoint(ckpt)
        try:
            model.load_state_dict(state["model"], strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise SlimpError(f"--init {train.init}: weights do not fit ({first})") from None
        model.set_stage("multilabel")
        extra["init"] = {"checkpoint": str(Path(ckpt).resolve()), "sha256": sha256_file(ckpt)}
    model.multilabel_trained.fill_(True)
    dataset = CaseDataset(index, cases, preprocess=model.preprocess, views=1, augment=False)
    return PseudoLabels(model, dataset, seed=train.seed, device=device, info=info), extra


class PseudoLabels:
    """Stage 2's memory bank and per-epoch k-means pseudo-labels (hooks of `run_training`).

    Under torchrun every rank holds the whole bank: the first pass splits the cases over the
    ranks and gathers them, each step's embeddings are gathered from every rank, so the banks,
    hence the k-means labels, are the same everywhere.
    """

    def __init__(
        self,
        model,
        dataset: CaseDataset,
        *,
        seed: int,
        device: torch.device,
        info: D.DistInfo | None = None,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.seed = seed
        self.device = device
        self.info = info or D.DistInfo()
        self.bank: torch.Tensor | None = None  # [cases, 8, label_dim] float32, CPU
        self.labels: torch.Tensor | None = None  # [cases, 8] long: the current epoch's
        self.labels_epoch = -1

    def start(self, extra: dict | None) -> None:
        """The saved bank on resume, else one eval-mode pass over every case."""
        if extra and "bank" in extra:
            self.bank = extra["bank"].float().cpu()
            self.labels = extra["labels"].long().cpu()
            self.labels_epoch = int(extra["labels_epoch"])
            return
        self.bank = self.embed_all()

    @torch.no_grad()
    def embed_all(self, chunk: int = 64) -> torch.Tensor:
        """Every case's label embeddings in eval mode: [cases, 8, label_dim] float32, CPU
        (under torchrun each rank embeds a contiguous share, then all are gathered)."""
        was_training = self.model.training
        self.model.eval()
        n, rank, world = len(self.dataset), self.info.rank, self.info.world_size
        lo, hi = n * rank // world, n * (rank + 1) // world
        rows = [torch.zeros(0, len(LABEL_SIZES), self.model.config.label_dim)]
        for start in range(lo, hi, chunk):
            items = range(start, min(start + chunk, hi))
            samples = [self.dataset[i] for i in items]
            batch = batch_to(collate_cases(samples), self.device, self.model.preprocess)
            rows.append(self.model(batch)["embeddings"].float().cpu())
        self.model.train(was_training)
        mine = torch.cat(rows)
        if not self.info.enabled:
            return mine
        return D.gather_with_grad(mine.to(self.device)).cpu()

    def epoch_start(self, epoch: int, step_in_epoch: int) -> None:
        """Cluster the bank (unless resuming inside an epoch whose labels were saved)."""
        if step_in_epoch > 0 and self.labels_epoch == epoch:
            return
        labels, centroids = pseudo_labels(self.bank, LABEL_SIZES, seed=self.seed, epoch=epoch)
        self.model.set_prototypes(centroids)
        self.labels, self.labels_epoch = labels, epoch

    def outputs(self, batch: dict, outputs: dict) -> dict:
        targets = self.labels[batch["case"].cpu()].to(outputs["logits"].device)
        return {**outputs, "targets": targets}

    def after_step(self, batch: dict, outputs: dict) -> None:
        cases, emb = batch["case"], outputs["embeddings"].detach().float()
        if self.info.enabled:  # every rank's cases, so the banks stay equal
            cases = D.gather_with_grad(cases.to(emb.device, torch.float64)).long()
            emb = D.gather_with_grad(emb)
        self.bank[cases.cpu()] = emb.cpu()

    def state_dict(self) -> dict:
        return {
            "bank": self.bank.clone(),
            "labels": self.labels.clone() if self.labels is not None else torch.zeros(0),
            "labels_epoch": self.labels_epoch,
        }
