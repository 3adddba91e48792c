"""`slimp pretrain` and `slimp adapt`: parse options, call `slimp_cli.train`, print a summary.

The options both take are declared once (`TRAINING_OPTIONS`, `RUN_OPTIONS`, given to each
command by `options.with_options`), and both end in one library call (`_train` ->
`train.run_stage` with the command's stage): the two commands differ only in their own
arguments (pretrain's model and SM3 options; adapt's CHECKPOINT and --tune).

Options left out keep their defaults, or, with `--resume`, the values saved in the run dir's
config.json (so `slimp pretrain DATA --out RUN --resume` continues a run as it was started).
Several processes: `torchrun --nproc-per-node K -m slimp_cli.cli pretrain ...`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand

from ..core.errors import SlimpError
from . import choices as C
from .options import VERIFY_HELP, Shared, given, img_size_option, resolve_input_size, with_options

console = Console(stderr=True)

_T = "Training"
_M = "Model"


def _opt(*names: str, help: str, panel: str = _T):
    return typer.Option(*names, help=help, rich_help_panel=panel)


# Training options shared by pretrain and adapt (None = default, or the saved value on --resume).
Method = Annotated[
    C.Method | None,
    _opt(
        "--method",
        help="slimp (default) or sm3 (dermoscopic + clinical image branches, papers/sm3_paper.txt; "
        "resnet50, 224 px; stage 1 B 96, 400 epochs, SimCLR views, lr 1e-6 from --image-weights "
        "(the paper's) or 1e-3 from random weights; stage 2 B 256 lr 1e-4 150 epochs tau 1; "
        "weight decay 0.01; options given override them; docs/cli.md).",
        panel=_M,
    ),
]
_S = "SM3"
PatientsPerBatch = Annotated[
    int | None,
    _opt(
        "--patients-per-batch",
        "-B",
        help="Patients per step B, per process (default: pretrain 4, adapt 64).",
    ),
]
LesionsPerPatient = Annotated[
    int | None,
    _opt(
        "--lesions-per-patient",
        "-N",
        help="At most N lesions per patient and step, re-drawn every epoch (default 100).",
    ),
]
ImagesPerBatch = Annotated[
    int | None,
    typer.Option(
        "--images-per-batch",
        min=2,
        help="--variant image (SimCLR) only: images per step, drawn across patients from each "
        "epoch's images (every training patient's <= N, as the nested run sees them). Default "
        "256, at most a quarter of an epoch's images; with it lr defaults to 1.5e-4 x batch / "
        "256 (config.json: image_baseline).",
        rich_help_panel=_T,
    ),
]
Epochs = Annotated[
    int | None,
    _opt("--epochs", help="Epochs; the LR schedule spans them (default: pretrain 150, adapt 100)."),
]
MaxSteps = Annotated[
    int | None,
    _opt(
        "--max-steps",
        help="Stop after K steps in total (the schedule still follows --epochs, so a --resume ends where an uninterrupted run ends).",
    ),
]
Lr = Annotated[float | None, _opt("--lr", help="AdamW peak learning rate (default 1e-4).")]
WeightDecay = Annotated[
    float | None, _opt("--weight-decay", help="AdamW weight decay (default 0.05).")
]
WarmupSteps = Annotated[
    int | None, _opt("--warmup-steps", help="Linear warm-up steps (default 5% of the schedule).")
]
Temperature = Annotated[
    float | None,
    _opt("--temperature", help="InfoNCE temperature tau (default 0.1; not given by the paper)."),
]
Lam = Annotated[
    float | None, _opt("--lam", help="lambda: weight of the inner (lesion) loss (default 0.9).")
]
GradClip = Annotated[
    float | None, _opt("--grad-clip", help="Gradient-norm clipping (default 1.0).")
]
Seed = Annotated[int | None, _opt("--seed", help="Seed of everything random (default 0).")]
Device = Annotated[
    str | None,
    typer.Option(
        "--device",
        help=C.DEVICE_HELP + " Default auto.",
        rich_help_panel=_T,
        callback=C.device_name,
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=0,
        help=C.WORKERS_HELP + " Default: the cores this process may use (affinity, cgroup "
        "quota, SLURM_CPUS_PER_TASK), at most 16.",
        rich_help_panel=_T,
    ),
]
Augment = Annotated[
    bool | None,
    _opt(
        "--augment/--no-augment",
        help="Random resized crop (60-100%), flips, small colour jitter (default off).",
    ),
]
AugmentRecipe = Annotated[
    str | None,
    _opt(
        "--augment-recipe",
        help="auto (default: the standard SimCLR recipe for --variant image, the light one "
        "for SLIMP), light, simclr, sm3 (SM3's official SimCLR parameters: crop 50-100%, "
        "jitter 0.8) or mild (crop 50-100%, jitter 0.4, no blur: the default of --method "
        "sm3's stage 1 from random weights).",
    ),
]
DecodeOpt = Annotated[C.Decode | None, _opt("--decode", help=C.DECODE_HELP + " Default cpu.")]
PositiveSampling = Annotated[
    bool | None,
    _opt(
        "--positive-sampling/--no-positive-sampling",
        help="Always include a patient's malignant lesions among its N (uses labels; default: on for pretrain, off for adapt).",
    ),
]
Precision = Annotated[
    str | None,
    _opt(
        "--precision",
        help="auto (default: bf16 on GPUs with fast bf16, fp16 with a gradient scaler on the "
        "others, e.g. T4/P100; fp32 on the CPU), bf16, fp16 or fp32.",
    ),
]
GradCheckpointing = Annotated[
    bool | None,
    _opt(
        "--grad-checkpointing/--no-grad-checkpointing",
        help="Recompute the ViT blocks in the backward pass: less GPU memory, ~30% more time.",
    ),
]
Compile = Annotated[
    bool | None, _opt("--compile/--no-compile", help="torch.compile the model (default off).")
]
LogEvery = Annotated[
    int | None,
    _opt(
        "--log-every",
        help="A metrics.jsonl line every K steps (default 10); when stderr is not a terminal "
        "(SLURM, nohup, a pipe) also a plain log line instead of the progress bar.",
    ),
]
ReportTo = Annotated[
    str | None,
    typer.Option(
        "--report-to",
        metavar="LIST",
        help="Mirror metrics.jsonl to a comma list of tensorboard (RUN/tensorboard/) and wandb "
        "(RUN/wandb/; WANDB_MODE=offline needs no network), or none (default). Each is an "
        "optional extra: pip install 'slimp[tensorboard]', 'slimp[wandb]'.",
        rich_help_panel=_T,
        callback=C.comma_list(C.REPORT_TO),
    ),
]
KeepEpochCheckpoints = Annotated[
    bool | None,
    _opt(
        "--keep-epoch-checkpoints/--no-keep-epoch-checkpoints",
        help="Also keep checkpoint-epoch-XXXX.pt files.",
    ),
]
ImageSslWeight = Annotated[
    float | None,
    typer.Option(
        "--image-ssl-weight",
        min=0.0,
        help="W of an image self-supervision term (SLIP, Mu et al. 2022; not in the SLIMP "
        "paper): loss = nested (or flat) + W x NT-Xent between two SimCLR views of every "
        "image, logged as loss_ssl. Default 0: the paper's loss, no extra views.",
        rich_help_panel=_T,
    ),
]


def parse_holdout(text: str) -> float | str:
    """--holdout: a fraction, or "official"."""
    if text.strip().lower() == "official":
        return "official"
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give a fraction in [0, 1) or 'official'") from None


Holdout = Annotated[
    str | None,
    typer.Option(
        "--holdout",
        metavar="FRACTION|official",
        parser=parse_holdout,
        rich_help_panel=_T,
        help="Fraction of patients held out of training (default 0.1; stratified, patient-"
        "grouped, written to holdout.json): never trained on, they give the per-epoch "
        "validation loss and the rows probe/retrieve report on. 0 = none (warned). 'official': "
        "the patients of the dataset's official test split (Derm7pt), the cases probe/retrieve "
        "--split official score.",
    ),
]


HoldoutSeed = Annotated[
    int | None, _opt("--holdout-seed", help="Seed of the held-out draw (default 0).")
]
Progress = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress",
        help="Show a progress bar and one line per epoch (plain log lines when stderr is not "
        "a terminal).",
    ),
]
Verify = Annotated[bool, typer.Option("--verify", help=VERIFY_HELP)]
ShardUrl = Annotated[
    str | None,
    typer.Option(
        "--shard-url",
        help=C.SHARD_URL_HELP
        + " Training then streams at epoch granularity: no per-epoch validation loss, "
        "standardisation from schema.json; under torchrun each process reads its own shards. "
        "Not with --method sm3.",
        callback=C.shard_url,
    ),
]
RESUME_HELP = (
    "Continue the run in --out from checkpoint-last.pt (same result as an uninterrupted run); "
    "--resume PATH: from a run dir or a checkpoint file (e.g. RUN/checkpoint-best.pt); one in "
    "another run dir continues that run in a new --out. "
    "With --shard-url the run resumes streamed (same template or another one for the same "
    "data): exactly at an epoch boundary; a checkpoint inside an epoch re-reads (without "
    "decoding) the epoch's stream up to its step and needs the same --workers."
)


CONFIG_HELP = (
    "A .json/.yaml file of options by their own names (patients_per_batch: 8, or "
    "patients-per-batch), or a saved run's config.json (or its run dir). Options given here "
    "override it."
)


def _resume_option(help: str):
    return typer.Option(None, "--resume", metavar="[PATH]", help=help)


class OptionalValueCommand(TyperCommand):
    """A command whose `--resume` may stand alone: Typer's options always take their value,
    so `--resume` at the end of the line or before another option gets the value "latest"
    (the run dir's checkpoint-last.pt); `--resume PATH` and `--resume=PATH` take PATH."""

    optional_values = {"--resume": "latest"}

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, fill_optional_values(args, self.optional_values))


def fill_optional_values(args: list[str], optional: dict[str, str]) -> list[str]:
    """`args` with each option of `optional` that lacks a value (last, or followed by an option
    or `--`) given its default value: ["--resume", "--seed", "1"] -> ["--resume", "latest",
    "--seed", "1"]. Words after `--` are left alone."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        out.append(arg)
        following = args[i + 1] if i + 1 < len(args) else None
        if arg in optional and (following is None or following.startswith("-")):
            out.append(optional[arg])
    return out


def _resume_value(resume: str | None):
    """The library's `resume`: False, True (the run dir's own checkpoint) or a path."""
    if resume is None:
        return False
    return True if resume == "latest" else Path(resume)


def _train_options(options: dict) -> dict:
    """The TrainConfig fields the user gave, from a command's arguments (its locals())."""
    from ..train import TrainConfig

    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    return given(**{k: C.value(v) for k, v in options.items() if k in keys})


def _summary(run_dir: Path) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from ..models.runs import BEST, SUMMARY, read_config, read_metrics, read_summary

    metrics = read_metrics(run_dir)
    val = read_metrics(run_dir, kind="validation")
    cfg = read_config(run_dir)
    last = metrics[-1] if metrics else {}
    loss = f", last loss {last['loss']:.4f}" if "loss" in last else ""
    if val:
        loss += f", held-out loss {val[-1]['val_loss']:.4f} (epoch {val[-1]['epoch']})"
    files = "checkpoint-last.pt"
    held_out = [r for r in read_summary(run_dir) if r["val_loss"] is not None]
    if (run_dir / BEST).is_file() and held_out:
        best = min(held_out, key=lambda r: r["val_loss"])
        files += f", {BEST} (epoch {best['epoch']}, held-out loss {best['val_loss']:.4f})"
    console.print(
        f"wrote [bold]{run_dir}[/]: {cfg['variant']} model, step {last.get('step', 0)}"
        f"{loss}; {files}, config.json, metrics.jsonl"
        + (f", {SUMMARY}" if (run_dir / SUMMARY).is_file() else "")
    )


# The options pretrain and adapt share, in --help's order (the panels group them): the
# commands differ only in their own parameters.
_BOTH = ("pretrain", "adapt")
TRAINING_OPTIONS = tuple(
    Shared(name=name, annotation=annotation, commands=commands)
    for name, annotation, commands in (
        ("method", Method, _BOTH),
        ("holdout", Holdout, _BOTH),
        ("holdout_seed", HoldoutSeed, _BOTH),
        ("patients_per_batch", PatientsPerBatch, _BOTH),
        ("lesions_per_patient", LesionsPerPatient, _BOTH),
        ("images_per_batch", ImagesPerBatch, ("pretrain",)),
        ("epochs", Epochs, _BOTH),
        ("max_steps", MaxSteps, _BOTH),
        ("lr", Lr, _BOTH),
        ("weight_decay", WeightDecay, _BOTH),
        ("warmup_steps", WarmupSteps, _BOTH),
        ("temperature", Temperature, _BOTH),
        ("lam", Lam, _BOTH),
        ("grad_clip", GradClip, _BOTH),
        ("seed", Seed, _BOTH),
        ("device", Device, _BOTH),
        ("workers", Workers, _BOTH),
        ("augment", Augment, _BOTH),
        ("augment_recipe", AugmentRecipe, _BOTH),
        ("positive_sampling", PositiveSampling, _BOTH),
        ("compile", Compile, _BOTH),
        ("precision", Precision, _BOTH),
        ("grad_checkpointing", GradCheckpointing, _BOTH),
        ("log_every", LogEvery, _BOTH),
        ("report_to", ReportTo, _BOTH),
        ("keep_epoch_checkpoints", KeepEpochCheckpoints, _BOTH),
        ("image_ssl_weight", ImageSslWeight, _BOTH),
        ("decode", DecodeOpt, ("pretrain",)),
    )
)
# After each command's own options: how the run reads its data and reports.
RUN_OPTIONS = (
    Shared(name="progress", annotation=Progress, default=True),
    Shared(name="verify", annotation=Verify, default=False),
    Shared(name="shard_url", annotation=ShardUrl),
)


def _train(command: str, *, config: Path | None, resume: str | None, options: dict, **given):
    """The library call of `command` ("pretrain" or "adapt") from its parsed options: the
    TrainConfig fields given in `options` over a --config file's; `given` = the command's
    own library arguments (`data`, `out`, and `model` or `source` and `tune`). Prints the
    run's summary."""
    from ..train import run_stage

    train = _train_options(options)
    if config is not None:
        if resume:
            raise SlimpError(
                "--config with --resume: a resumed run continues with its own config.json; "
                "leave out --config"
            )
        from ..train.config_file import read_config_file

        file = read_config_file(config, command=command)
        train = {**file.train, **train}
        if "model" in given:
            given["model"] = {**file.model, **given["model"]}
        if "tune" in given and given["tune"] is None:
            given["tune"] = file.tune
    result = run_stage(
        command,
        given.pop("data"),
        given.pop("out"),
        train=train,
        resume=_resume_value(resume),
        progress=options["progress"],
        verify=options["verify"],
        shard_url=options["shard_url"],
        **given,
    )
    _summary(result.run_dir)


@with_options("pretrain", after="config", options=TRAINING_OPTIONS, tail=RUN_OPTIONS)
def pretrain_cmd(
    data: Path = typer.Argument(
        ...,
        metavar="DATA",
        help="Shard folder written by slimp ingest (with --shard-url: its manifest.json and "
        "schema.json).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Run dir to create (config.json, checkpoints, metrics.jsonl)."
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help=CONFIG_HELP,
    ),
    variant: C.Variant | None = typer.Option(
        None,
        "--variant",
        help="nested (default; becomes flat when the data has no patient "
        "features), flat, or image (SimCLR baseline).",
        rich_help_panel=_M,
    ),
    image_model: str | None = typer.Option(
        None,
        "--image-model",
        help="timm ViT name (default vit_small_patch16_224; also "
        "vit_tiny_patch16_224, vit_base_patch16_224...) or the local test models vit_test, vit_demo.",
        rich_help_panel=_M,
    ),
    input_size: int | None = typer.Option(
        None,
        "--input-size",
        min=1,
        help="Side in pixels of the image model's input (default 224); shards stored at "
        "another size (ingest --image-size) are resized to it.",
        rich_help_panel=_M,
    ),
    img_size: int | None = img_size_option(),
    image_weights: Path | None = typer.Option(
        None,
        "--image-weights",
        help="Local weights file for the image encoder (nothing is downloaded).",
        rich_help_panel=_M,
    ),
    embed_dim: int | None = typer.Option(
        None,
        "--embed-dim",
        help="Shared embedding size D (default: the ViT width).",
        rich_help_panel=_M,
    ),
    tab_dim: int | None = typer.Option(
        None, "--tab-dim", help="TRACE token size d (default: the ViT width).", rich_help_panel=_M
    ),
    tab_layers: int | None = typer.Option(
        None,
        "--tab-layers",
        help="TRACE transformer layers (default 1, TRACE's; see docs/method.md on the paper's "
        "parameter counts).",
        rich_help_panel=_M,
    ),
    stage: str | None = typer.Option(
        None,
        "--stage",
        help="SM3: multimodal (stage 1, default) or multilabel (stage 2: pseudo-multi-labels, "
        "starting from the stage-1 run given with --init). -B is then cases per step.",
        rich_help_panel=_S,
    ),
    init: Path | None = typer.Option(
        None, "--init", help="SM3 stage 2: the stage-1 run dir to start from.", rich_help_panel=_S
    ),
    fusion: str | None = typer.Option(
        None,
        "--fusion",
        help="SM3 stage 1 fusion (Table II): sep_sep (default, the paper's), sep_shared or concat.",
        rich_help_panel=_S,
    ),
    cnn_stem: str | None = typer.Option(
        None,
        "--cnn-stem",
        help="SM3 ResNet branches' stem: standard (7x7 stride-2 conv + max pool) or small "
        "(SimCLR's for CIFAR-10: 3x3 stride 1, no max pool). Default: small from random "
        "weights at --input-size <= 64, else standard.",
        rich_help_panel=_S,
    ),
    proj_dim: int | None = typer.Option(
        None, "--proj-dim", help="SM3 projection head width (default 128).", rich_help_panel=_S
    ),
    label_dim: int | None = typer.Option(
        None,
        "--label-dim",
        help="SM3 label-specific projection width (default 512).",
        rich_help_panel=_S,
    ),
    resume: str | None = _resume_option(RESUME_HELP),
    **options,
) -> None:
    """Pre-train SLIMP (nested image-metadata contrastive learning) on ingested shards.

    Paper defaults: ViT-Small at 224 px, B = 4 patients, N = 100 lesions, 150 epochs, AdamW
    lr 1e-4, lambda 0.9. `--method sm3` trains SM3 instead (two stages: `--stage multimodal`,
    then `--stage multilabel --init RUN1` into a second run dir).
    """
    model = given(
        variant=C.value(variant),
        image_model=image_model,
        img_size=resolve_input_size(input_size, img_size, console),
        image_weights=str(image_weights) if image_weights else None,
        embed_dim=embed_dim,
        tab_dim=tab_dim,
        tab_layers=tab_layers,
        fusion=fusion,
        cnn_stem=cnn_stem,
        proj_dim=proj_dim,
        label_dim=label_dim,
    )
    # SM3's --stage and --init (their own panel) are TrainConfig fields
    options.update(stage=stage, init=str(init) if init is not None else None)
    _train(
        "pretrain",
        config=config,
        resume=resume,
        options=options,
        data=data,
        out=out,
        model=model,
    )


@with_options("adapt", after="config", options=TRAINING_OPTIONS, tail=RUN_OPTIONS)
def adapt_cmd(
    checkpoint: Path = typer.Argument(
        ...,
        metavar="CHECKPOINT",
        help="Run dir of slimp pretrain/adapt, or a checkpoint file in it.",
    ),
    data: Path = typer.Argument(
        ..., metavar="DATA", help="Target dataset's shard folder (its columns may differ)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run dir to create."),
    tune: C.Tune | None = typer.Option(
        None,
        "--tune",
        help="embeddings (default: ViT patch embedding + tabular input "
        "embeddings trainable, the rest frozen) or all.",
    ),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    resume: str | None = _resume_option(
        "Continue the adapt run in --out; --resume PATH: from a run dir or a checkpoint file "
        "(as pretrain's, --shard-url too)."
    ),
    **options,
) -> None:
    """Continual pre-training of a SLIMP model on a target dataset (paper Sec. 3.2).

    The tabular encoders get new input layers for the target's columns; with --tune embeddings
    only the embedding layers train. A nested model becomes flat on data without patient
    features. Paper defaults: B = 64, 100 epochs.
    """
    _train(
        "adapt",
        config=config,
        resume=resume,
        options=options,
        data=data,
        out=out,
        source=checkpoint,
        tune=C.value(tune),
    )


def register(app: typer.Typer) -> None:
    app.command("pretrain", cls=OptionalValueCommand)(pretrain_cmd)
    app.command("adapt", cls=OptionalValueCommand)(adapt_cmd)
