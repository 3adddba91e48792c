"""`slimp pretrain` and `slimp adapt`: parse options, call `slimp_cli.train`, print a summary.

Options left out keep their defaults, or, with `--resume`, the values saved in the run dir's
config.json (so `slimp pretrain DATA --out RUN --resume` continues a run as it was started).
Several processes: `torchrun --nproc-per-node K -m slimp_cli.cli pretrain ...`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)

_T = "Training"
_M = "Model"


def _given(**options) -> dict:
    return {k: v for k, v in options.items() if v is not None}


def _summary(run_dir: Path) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from ..train import read_config, read_metrics

    metrics = read_metrics(run_dir)
    cfg = read_config(run_dir)
    last = metrics[-1] if metrics else {}
    loss = f", last loss {last['loss']:.4f}" if "loss" in last else ""
    console.print(f"wrote [bold]{run_dir}[/]: {cfg['variant']} model, step {last.get('step', 0)}"
                  f"{loss}; checkpoint-last.pt, config.json, metrics.jsonl")


def pretrain_cmd(
    data: Path = typer.Argument(..., help="Shard folder written by slimp ingest."),
    out: Path = typer.Option(..., "--out", "-o", help="Run dir to create (config.json, checkpoints, metrics.jsonl)."),
    method: Optional[str] = typer.Option(
        None, "--method", help="slimp (default). sm3 is accepted but not implemented yet (error).",
        rich_help_panel=_M),
    variant: Optional[str] = typer.Option(
        None, "--variant", help="nested (default; becomes flat when the data has no patient "
        "features), flat, or image (SimCLR baseline).", rich_help_panel=_M),
    image_model: Optional[str] = typer.Option(
        None, "--image-model", help="timm ViT name (default vit_small_patch16_224) or vit_test.",
        rich_help_panel=_M),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Image side in pixels (default 224).",
                                           rich_help_panel=_M),
    image_weights: Optional[Path] = typer.Option(
        None, "--image-weights", help="Local weights file for the image encoder (nothing is downloaded).",
        rich_help_panel=_M),
    embed_dim: Optional[int] = typer.Option(None, "--embed-dim", help="Shared embedding size D (default: the ViT width).",
                                            rich_help_panel=_M),
    tab_dim: Optional[int] = typer.Option(None, "--tab-dim", help="TRACE token size d (default: the ViT width).",
                                          rich_help_panel=_M),
    patients_per_batch: Optional[int] = typer.Option(None, "--patients-per-batch", "-B", help="Patients per step B (default 4).", rich_help_panel=_T),
    lesions_per_patient: Optional[int] = typer.Option(None, "--lesions-per-patient", "-N", help="At most N lesions per patient and step (default 100).", rich_help_panel=_T),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs; the LR schedule spans them (default 150).", rich_help_panel=_T),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after K steps in total (the schedule still follows --epochs).", rich_help_panel=_T),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW peak learning rate (default 1e-4).", rich_help_panel=_T),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay (default 0.05).", rich_help_panel=_T),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear warm-up steps (default 5% of the schedule).", rich_help_panel=_T),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="InfoNCE temperature tau (default 0.1; not given by the paper).", rich_help_panel=_T),
    lam: Optional[float] = typer.Option(None, "--lam", help="lambda: weight of the inner (lesion) loss (default 0.9).", rich_help_panel=_T),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Gradient-norm clipping (default 1.0).", rich_help_panel=_T),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of everything random (default 0).", rich_help_panel=_T),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default; CUDA when present), cpu or cuda.", rich_help_panel=_T),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers decoding JPEGs (default 4).", rich_help_panel=_T),
    augment: Optional[bool] = typer.Option(
        None, "--augment/--no-augment", help="Random resized crop (60-100%), flips, small colour jitter (default off).", rich_help_panel=_T),
    positive_sampling: Optional[bool] = typer.Option(
        None, "--positive-sampling/--no-positive-sampling", help="Always include a patient's malignant lesions among its N (default on).", rich_help_panel=_T),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (default off).", rich_help_panel=_T),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="metrics.jsonl line every K steps (default 10).", rich_help_panel=_T),
    keep_epoch_checkpoints: Optional[bool] = typer.Option(
        None, "--keep-epoch-checkpoints/--no-keep-epoch-checkpoints", help="Also keep checkpoint-epoch-XXXX.pt files.", rich_help_panel=_T),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from checkpoint-last.pt (same result as an uninterrupted run)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Pre-train SLIMP (nested image-metadata contrastive learning) on ingested shards.

    Paper defaults: ViT-Small at 224 px, B = 4 patients, N = 100 lesions, 150 epochs, AdamW
    lr 1e-4, lambda 0.9. `--method sm3` is reserved: SM3 is not implemented yet.
    """
    from ..train import pretrain

    model = _given(variant=variant, image_model=image_model, img_size=img_size,
                   image_weights=str(image_weights) if image_weights else None,
                   embed_dim=embed_dim, tab_dim=tab_dim)
    train = _given(
        method=method, patients_per_batch=patients_per_batch,
        lesions_per_patient=lesions_per_patient, epochs=epochs, max_steps=max_steps, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, temperature=temperature, lam=lam,
        grad_clip=grad_clip, seed=seed, device=device, workers=workers, augment=augment,
        positive_sampling=positive_sampling, compile=compile, log_every=log_every,
        keep_epoch_checkpoints=keep_epoch_checkpoints)
    run_dir = pretrain(data, out, model=model, train=train, resume=resume, progress=progress)
    _summary(run_dir)


def adapt_cmd(
    checkpoint: Path = typer.Argument(..., help="Run dir of slimp pretrain/adapt, or a checkpoint file in it."),
    data: Path = typer.Argument(..., help="Target dataset's shard folder (its columns may differ)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run dir to create."),
    tune: Optional[str] = typer.Option(
        None, "--tune", help="embeddings (default: ViT patch embedding + tabular input "
        "embeddings trainable, the rest frozen) or all."),
    method: Optional[str] = typer.Option(None, "--method", help="slimp (default); sm3 is not implemented yet.", rich_help_panel=_T),
    patients_per_batch: Optional[int] = typer.Option(None, "--patients-per-batch", "-B", help="Patients per step B (default 64).", rich_help_panel=_T),
    lesions_per_patient: Optional[int] = typer.Option(None, "--lesions-per-patient", "-N", help="At most N lesions per patient and step (default 100).", rich_help_panel=_T),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs; the LR schedule spans them (default 100).", rich_help_panel=_T),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after K steps in total.", rich_help_panel=_T),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW peak learning rate (default 1e-4).", rich_help_panel=_T),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay (default 0.05).", rich_help_panel=_T),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear warm-up steps (default 5% of the schedule).", rich_help_panel=_T),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="InfoNCE temperature (default 0.1).", rich_help_panel=_T),
    lam: Optional[float] = typer.Option(None, "--lam", help="lambda (default 0.9).", rich_help_panel=_T),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Gradient-norm clipping (default 1.0).", rich_help_panel=_T),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default 0).", rich_help_panel=_T),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu or cuda.", rich_help_panel=_T),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers (default 4).", rich_help_panel=_T),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Image augmentation (default off).", rich_help_panel=_T),
    positive_sampling: Optional[bool] = typer.Option(
        None, "--positive-sampling/--no-positive-sampling", help="Positive sampling (default on).", rich_help_panel=_T),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model.", rich_help_panel=_T),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="metrics.jsonl line every K steps (default 10).", rich_help_panel=_T),
    keep_epoch_checkpoints: Optional[bool] = typer.Option(
        None, "--keep-epoch-checkpoints/--no-keep-epoch-checkpoints", help="Also keep checkpoint-epoch-XXXX.pt files.", rich_help_panel=_T),
    resume: bool = typer.Option(False, "--resume", help="Continue the adapt run in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Continual pre-training of a SLIMP model on a target dataset (paper Sec. 3.2).

    The tabular encoders get new input layers for the target's columns; with --tune embeddings
    only the embedding layers train. A nested model becomes flat on data without patient
    features. Paper defaults: B = 64, 100 epochs.
    """
    from ..train import adapt

    train = _given(
        method=method, patients_per_batch=patients_per_batch,
        lesions_per_patient=lesions_per_patient, epochs=epochs, max_steps=max_steps, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, temperature=temperature, lam=lam,
        grad_clip=grad_clip, seed=seed, device=device, workers=workers, augment=augment,
        positive_sampling=positive_sampling, compile=compile, log_every=log_every,
        keep_epoch_checkpoints=keep_epoch_checkpoints)
    run_dir = adapt(checkpoint, data, out, train=train, tune=tune, resume=resume,
                    progress=progress)
    _summary(run_dir)


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain_cmd)
    app.command("adapt")(adapt_cmd)
