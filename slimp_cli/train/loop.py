"""The training loop shared by `pretrain` and `adapt`.

AdamW (weight decay on weight matrices and embedding tables only), linear warm-up then cosine
decay to 0 over `epochs * steps_per_epoch` steps (LambdaLR), `--precision` (bf16 autocast on
CUDA, fp16 + gradient scaler on GPUs without fast bf16, fp32 on CPU; train/precision.py),
AdamW's implementation per device (train/optim.py), optional gradient checkpointing and torch.compile, gradient clipping,
DistributedDataParallel under torchrun.
Rank 0 writes `metrics.jsonl` (one line per `log_every` steps: means over the interval) and
`summary.csv` (one row per epoch: train loss, held-out loss, lr, images/s, elapsed time), shows
a rich progress bar and one line per epoch, saves `checkpoint-last.pt` after every epoch and
when it stops, and `checkpoint-best.pt` after an epoch of lower held-out loss than any before. A
non-finite loss stops the run with a SlimpError before the optimiser step, so the last
checkpoint on disk stays the last good one. Ctrl-C or SIGTERM (a cluster's pre-emption) in a
single-process run finishes the current step, saves `checkpoint-last.pt` there and raises
`TrainingInterrupted`: `--resume` then continues exactly as if nothing had happened.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.devices import default_workers
from ..core.errors import SlimpError, TrainingInterrupted, raise_if_interrupted
from ..core.paths import atomic_path, write_error, write_json, write_text
from ..data.decode import check_decode
from ..data.schema import ResolvedSchema
from ..data.shard_stream import ShardSource
from ..models.runs import (
    BEST,
    BEST_KEY,
    CONFIG,
    LAST,
    METRICS,
    SUMMARY,
    epoch_name,
    save_checkpoint,
    set_rng_state,
)
from . import distributed as D
from .batches import batch_to, collate, sample_options
from .data import (
    LocalBatches,
    PatientDataset,
    case_training_data,
    image_batch,
    make_loader,
    patient_infos,
    training_sampler,
    validation_plan,
)
from .optim import make_optimizer, optimizer_impl
from .precision import autocast as autocast_for
from .precision import grad_scaler, resolve_precision
from .records import EpochSummary, check_world_size, environment, epoch_line
from .report import log_line, open_mirror
from .ssl import HEAD_STATE, build_ssl_net, check_ssl_variant
from .streamed import stream_batches
from .train_config import TrainConfig

NO_DECAY_NAMES = ("cls_token", "pos_embed", "reg_token", "dist_token")


@contextlib.contextmanager
def stop_requests(enabled: bool):
    """Turn the first SIGINT/SIGTERM into a request (a dict flag) checked between steps.

    A second Ctrl-C raises KeyboardInterrupt at once. Off under torchrun (the ranks would not
    stop at the same step) and outside the main thread (signals cannot be handled there).
    """
    raise_if_interrupted()  # a Ctrl-C during start-up that a finaliser swallowed
    request = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request["signal"] = signal.Signals(signum).name
        print(
            f"\n{request['signal']}: finishing this step and saving a checkpoint "
            "(Ctrl-C again to abort without one)",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: its folder, the trained model, where it ended."""

    run_dir: Path
    model: nn.Module  # the raw model (not DDP/compiled), on the training device
    step: int  # optimiser steps done in total
    epoch: int  # finished epochs
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl lines of this session


def set_train_mode(model: nn.Module) -> None:
    """`model.train()`, except fully frozen sub-modules, which go to eval (dropout off).

    A module with parameters none of which is trainable is frozen and evaluated as it was
    pre-trained; parameter-free modules (dropout, activations) follow their parent.
    """
    model.train()

    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                child.eval()
            else:
                visit(child)

    visit(model)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay for weight matrices/embedding tables, none for biases, norms, tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer, *, warmup: int, total: int):
    """LambdaLR over `lr_factor`, stepped once per optimiser update.

    Hand-written on purpose, not timm's CosineLRScheduler: timm's linear warm-up starts at
    `warmup_lr_init` on update 0 and first reaches the peak on the first cosine update, while
    this one uses lr/W on the first step and the peak on the last warm-up step (the cosine part
    is equal). No timm setting reproduces these rates (measured, W=5 of 100: step 0 2e-05 here,
    0 in timm), and runs saved with this LambdaLR state would resume on other rates.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=warmup, total=total)
    )


def progress_bar(console, *, get_time=None):
    """The rich bar: description, bar, step/total and ETA first, then the loss text, which is
    cut with an ellipsis when the terminal is narrow, so step/total and the ETA stay visible
    at 80 columns. `get_time`: rich's clock (tests pass a fake one)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class _Info(ProgressColumn):
        # a wrapable table column (rich shrinks those first) holding an unwrapped text
        def render(self, task):
            return Text(task.fields.get("info", ""), no_wrap=True, overflow="ellipsis")

    fixed = Column(no_wrap=True)
    return Progress(
        TextColumn("[bold]{task.description}", table_column=fixed),
        BarColumn(bar_width=12),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TextColumn("ETA", table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
        _Info(table_column=Column(no_wrap=False)),
        console=console,
        transient=False,
        **({"get_time": get_time} if get_time is not None else {}),
    )


class _Progress:
    """A rich progress bar on rank 0 (a silent stand-in elsewhere). When stderr is not a
    terminal (SLURM, nohup, a pipe) a bar would only be drawn at the end: plain log lines
    every `--log-every` steps instead (`log`). `line` prints a line (the epoch lines) in
    both modes, above the bar on a terminal."""

    def __init__(self, enabled: bool, total: int, done: int, description: str) -> None:
        self.bar = None
        self.enabled = enabled
        self.total, self.description = total, description
        self.plain = enabled and not sys.stderr.isatty()
        if not enabled or self.plain:
            return
        from rich.console import Console

        self.bar = progress_bar(Console(stderr=True))
        self.task = self.bar.add_task(description, total=total, completed=done, info="")
        self.bar.start()

    def update(self, advance: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=advance, info=info)

    def log(self, row: dict) -> None:
        if self.plain:
            print(log_line(self.description, row, self.total), file=sys.stderr, flush=True)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, highlight=False, markup=False)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _Metrics:
    """metrics.jsonl writer (rank 0); on resume drops lines past the checkpoint's step.
    `mirror` (`--report-to`) receives every row too."""

    def __init__(
        self, path: Path, enabled: bool, resume_step: int | None, mirror_to: str = "none"
    ) -> None:
        self.fh = None
        self.mirror = None
        if not enabled:
            return
        self.mirror = open_mirror(mirror_to, path.parent, resume_step)
        if resume_step is not None and path.is_file():
            keep = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            write_text(path, "".join(line + "\n" for line in keep))
        elif path.exists():
            path.unlink()
        self.path = path
        self.fh = open(path, "a")

    def write(self, row: dict) -> None:
        if self.fh is not None:
            try:
                self.fh.write(json.dumps(row) + "\n")
                self.fh.flush()
            except OSError as exc:  # a full disk: one line
                raise write_error(exc, self.path) from None
        if self.mirror is not None:
            self.mirror.write(row)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.mirror is not None:
            self.mirror.close()


def reconcile_best(run_dir: Path, best: dict | None, source_dir: Path) -> None:
    """On resume (rank 0): make `run_dir/checkpoint-best.pt` the checkpoint of the resumed
    checkpoint's best-so-far record `best` ({"epoch", "step", "val_loss"} or None).

    Kept when it is that one; else copied from `source_dir` (the run resumed from) when that
    holds it; else removed (it came from epochs after the checkpoint resumed from, which the
    run trains again), and the next epoch of lower held-out loss than `best` writes it.
    """
    target = run_dir / BEST
    want = best["step"] if best is not None else None
    if want is not None and _best_step(target) == want:
        return
    source = Path(source_dir) / BEST
    if want is not None and source.resolve() != target.resolve() and _best_step(source) == want:
        import shutil

        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        return
    if target.is_file():
        target.unlink()
        notice(f"removed {target}: it was of a later epoch than the checkpoint resumed from")


def _best_step(path: Path) -> int | None:
    """The step of a best checkpoint (None when absent or unreadable)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file is replaced like a stale one
        return None
    return ((state.get("extra") or {}).get(BEST_KEY) or {}).get("step")


def notice(message: str, info: D.DistInfo | None = None) -> None:
    """A one-line notice on stderr (rank 0 only)."""
    if info is None or info.is_main:
        print(f"notice: {message}", file=sys.stderr, flush=True)


def run_training(
    *,
    model: nn.Module,
    schema: ResolvedSchema | None,
    index,
    train: TrainConfig,
    patients=None,
    run_dir: Path,
    config: dict,
    device: torch.device,
    info: D.DistInfo,
    resume_state: dict | None = None,
    progress: bool = False,
    find_unused_parameters: bool = False,
    description: str = "train",
    hooks=None,
) -> TrainResult:
    """Train `model` (its trainable parameters) on `index` and write the run dir.

    `config` is written as `config.json` and copied into every checkpoint. `resume_state` is a
    loaded checkpoint to continue from (model weights are loaded here too). `patients`
    (`session.TrainingPatients`) says which patients train; the held-out ones give a
    validation loss after every epoch (`val_loss` rows of metrics.jsonl). None = all train.
    `index` is a `ShardIndex` (random access, train/data.py) or, with `--shard-url`, a
    `stream.ShardSource` (streamed at epoch granularity, train/streamed.py: no validation loss;
    config.json gains a `stream` block).
    `hooks` (SM3's
    multi-label stage: `train.sm3.PseudoLabels`) keeps state across steps: `start(extra)`
    before training, `epoch_start(epoch, step_in_epoch)`, `outputs(batch, outputs)` after the
    forward pass (adds the loss's targets), `after_step(batch, outputs)`, and `state_dict()`,
    saved in each checkpoint's `extra`.
    """
    variant = config["variant"]
    if train.image_ssl_weight > 0:
        check_ssl_variant(variant)  # before anything is written
    check_decode(train.decode, device)
    if train.decode == "gpu" and isinstance(index, ShardSource):
        raise SlimpError("--decode gpu reads local shards; use --decode cpu with --shard-url")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise SlimpError("no trainable parameters (check --tune)")
    pin_memory = device.type == "cuda"
    if isinstance(index, ShardSource):  # --shard-url: streamed at epoch granularity
        batches = stream_batches(
            index,
            model=model,
            schema=schema,
            patients=patients,
            train=train,
            info=info,
            pin_memory=pin_memory,
        )
        dataset, val_plan = None, []  # no validation loss (see train/streamed.py)
    else:
        batches, dataset, val_plan = local_batches(
            model, schema, index, patients, train, info, pin_memory=pin_memory
        )

    if resume_state is not None:
        check_world_size(resume_state.get("config"), info.world_size, run_dir)
        batches.check_resume(resume_state)
    # versions, git commit, command line, resolved device and world size of this session
    config = {**config, "environment": environment(device, info.world_size)}
    config["environment"]["optimizer_impl"] = optimizer_impl(device)
    if batches.record is not None:
        config["stream"] = batches.record
    run_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        write_json(run_dir / CONFIG, config)
    model.to(device)
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
    # `--image-ssl-weight`: the model and the SSL head train together (train/ssl.py)
    module: nn.Module = model
    if train.image_ssl_weight > 0:
        module = build_ssl_net(model, seed=train.seed)
        if resume_state is not None:
            module.head.load_state_dict(resume_state["extra"][HEAD_STATE])
        trainable = [p for p in module.parameters() if p.requires_grad]
    steps_per_epoch = batches.steps_per_epoch
    total = train.epochs * steps_per_epoch
    warmup = train.schedule_warmup(total)

    # AdamW's implementation per device, chosen by measurement (train/optim.py)
    optimizer = make_optimizer(
        parameter_groups(module, train.weight_decay), lr=train.lr, device=device
    )
    precision = resolve_precision(train.precision, device)
    scaler = grad_scaler(precision, device)
    if train.grad_checkpointing:
        enable_grad_checkpointing(model)
    scheduler = make_scheduler(optimizer, warmup=warmup, total=total)
    epoch, start_in_epoch, step = 0, 0, 0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        epoch = int(resume_state["epoch"])
        start_in_epoch = int(resume_state["step_in_epoch"])
        step = int(resume_state["step"])
        set_rng_state(resume_state["rng"])
        if scaler is not None and resume_state.get("extra", {}).get("grad_scaler"):
            scaler.load_state_dict(resume_state["extra"]["grad_scaler"])
        where = resume_state.get("resumed_from") or run_dir / LAST
        notice(f"resumed from step {step} (epoch {epoch + 1}/{train.epochs}) of {where}", info)

    net: nn.Module = module
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        D.sync_batch_norm(model, device)  # BatchNorm (SM3's CNNs) over the global batch

        net = DDP(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )
    if train.compile:
        net = torch.compile(net)
    autocast = autocast_for(precision, device)

    stop_at = min(total, train.max_steps) if train.max_steps is not None else total
    metrics = _Metrics(
        run_dir / METRICS, info.is_main, step if resume_state else None, train.report_to
    )
    bar = _Progress(progress and info.is_main, stop_at, min(step, stop_at), description)
    logged: list[dict] = []
    interval: dict[str, float] = {}
    n_interval, images_interval, t_interval = 0, 0, time.perf_counter()
    if resume_state is not None:  # the log interval the run stopped inside goes on: same rows
        carried = resume_state.get("extra", {}).get("log_interval") or {}
        interval, n_interval = dict(carried.get("sums", {})), int(carried.get("n", 0))
    t_step, speed = t_interval, None  # progress bar: moving average of images per second
    summary = EpochSummary(
        run_dir / SUMMARY,
        enabled=info.is_main,
        resume_epoch=epoch if resume_state is not None else None,
    )
    carried = resume_state.get("extra", {}) if resume_state is not None else {}
    best = carried.get(BEST_KEY)  # {"epoch", "step", "val_loss"} of checkpoint-best.pt
    if resume_state is not None and info.is_main:
        where = Path(resume_state.get("resumed_from") or run_dir / LAST)
        reconcile_best(run_dir, best, where.parent)
    # The epoch's running sums and the run's time so far go into every checkpoint, so a run
    # resumed inside an epoch writes that epoch's summary row over all of its steps.
    fresh_epoch = {"loss": 0.0, "n": 0, "images": 0, "seconds": 0.0}
    ep = dict(carried.get("epoch_interval") or fresh_epoch)
    elapsed_before = float(carried.get("elapsed_s", 0.0))
    t_session = t_epoch = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]

    def checkpoint(
        next_epoch: int, next_in_epoch: int, *, epoch_file: bool = False, best_file: bool = False
    ) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in trainable):
            raise SlimpError(
                f"weights became non-finite at step {step}; the last good "
                f"checkpoint is kept in {run_dir}; lower --lr"
            )
        if info.is_main:
            kw = dict(
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                epoch=next_epoch,
                step_in_epoch=next_in_epoch,
                step=step,
                config=config,
                extra={
                    **(hooks.state_dict() if hooks is not None else {}),
                    **({"grad_scaler": scaler.state_dict()} if scaler is not None else {}),
                    **({HEAD_STATE: module.head.state_dict()} if module is not model else {}),
                    "log_interval": {"sums": dict(interval), "n": n_interval},
                    "epoch_interval": {
                        **ep,
                        "seconds": ep["seconds"] + (time.perf_counter() - t_epoch),
                    },
                    "elapsed_s": elapsed_before + (time.perf_counter() - t_session),
                    **({BEST_KEY: dict(best)} if best is not None else {}),
                },
            )
            if best_file:  # first: a run stopped between the two resumes at the record before
                save_checkpoint(run_dir / BEST, **kw)
            save_checkpoint(run_dir / LAST, **kw)
            if epoch_file and train.keep_epoch_checkpoints:
                save_checkpoint(run_dir / epoch_name(next_epoch), **kw)
        D.barrier(info)

    if resume_state is not None and step >= stop_at:
        limit = f"--max-steps {train.max_steps}" if stop_at < total else f"--epochs {train.epochs}"
        notice(
            f"{run_dir} already reached step {step} ({limit}); give a larger --max-steps "
            "to train further",
            info,
        )
    if hooks is not None:
        hooks.start(resume_state.get("extra") if resume_state is not None else None)
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(stop_requests(not info.enabled))
        stack.callback(metrics.close)
        stack.callback(bar.close)
        while epoch < train.epochs and step < stop_at:
            s = start_in_epoch
            if hooks is not None:
                hooks.epoch_start(epoch, start_in_epoch)
            set_train_mode(module)
            for batch in batches.epoch(epoch, start_in_epoch):
                batch = batch_to(batch, device, model.preprocess)
                with autocast:
                    outputs = net(batch)
                if hooks is not None:
                    outputs = hooks.outputs(batch, outputs)
                losses = _compute_loss(variant, outputs, train, info)
                if not D.all_finite(losses["loss"], info):
                    last = run_dir / LAST
                    kept = (
                        f"the last good checkpoint is {last}"
                        if last.is_file()
                        else "no checkpoint was written yet"
                    )
                    raise SlimpError(
                        f"loss became non-finite ({float(losses['loss'].detach())}) at step "
                        f"{step + 1} (epoch {epoch + 1}); {kept}; lower --lr or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                lr = optimizer.param_groups[0]["lr"]  # the rate this step used
                if scaler is None:
                    losses["loss"].backward()
                    if train.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, train.grad_clip)
                    optimizer.step()
                else:  # fp16: scaled loss, unscaled gradients for clipping
                    scaler.scale(losses["loss"]).backward()
                    scaler.unscale_(optimizer)
                    if train.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, train.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                if hooks is not None:
                    hooks.after_step(batch, outputs)
                step += 1
                s += 1
                n_images = batch["n_images"] if "n_images" in batch else batch["images"].shape[0]
                n_images = int(n_images) * info.world_size
                if "images2" in batch:
                    n_images *= 2
                if "ssl_images1" in batch:  # the SLIMP view + two SSL views went through
                    n_images *= 3
                for k, v in losses.items():
                    interval[k] = interval.get(k, 0.0) + float(v.detach())
                n_interval += 1
                images_interval += n_images
                ep["loss"] += float(losses["loss"].detach())
                ep["n"] += 1
                ep["images"] += n_images
                now = time.perf_counter()
                rate = n_images / max(now - t_step, 1e-9)
                speed = rate if speed is None else 0.9 * speed + 0.1 * rate
                t_step = now
                parts = [
                    f"{k.replace('loss_', '')} {float(v.detach()):.3f}" for k, v in losses.items()
                ]
                bar.update(
                    1, "  ".join([parts[0], f"{speed:.0f} img/s", *parts[1:], f"lr {lr:.1e}"])
                )
                if step % train.log_every == 0 or step == stop_at or s == steps_per_epoch:
                    elapsed = max(time.perf_counter() - t_interval, 1e-9)
                    means = _mean_over_ranks(
                        {k: v / n_interval for k, v in interval.items()}, info, device
                    )
                    row = {
                        "step": step,
                        "epoch": epoch,
                        **means,
                        "lr": lr,
                        "images_per_s": images_interval / elapsed,
                    }
                    metrics.write(row)
                    bar.log(row)
                    logged.append(row)
                    if step % train.log_every == 0 or s == steps_per_epoch:
                        # a row at a --max-steps stop is extra: the interval runs on, so a
                        # resumed run logs the rows an uninterrupted one does
                        interval, n_interval = {}, 0
                    images_interval, t_interval = 0, time.perf_counter()
                if step >= stop_at or stop["signal"]:
                    break
            if s >= steps_per_epoch:
                epoch, start_in_epoch = epoch + 1, 0
                now = time.perf_counter()
                seconds = ep["seconds"] + (now - t_epoch)
                train_loss = _mean_over_ranks({"loss": ep["loss"] / max(ep["n"], 1)}, info, device)[
                    "loss"
                ]
                summary_row = {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": train_loss,
                    "val_loss": None,
                    "lr": lr,
                    "images_per_s": ep["images"] / max(seconds, 1e-9),
                    "elapsed_s": elapsed_before + (now - t_session),
                }
                new_best = False
                if val_plan and info.is_main:
                    row = {"step": step, "epoch": epoch}
                    row.update(validation_loss(module, dataset, val_plan, train, device, autocast))
                    metrics.write(row)
                    logged.append(row)
                    val = float(row["val_loss"])
                    summary_row["val_loss"] = val
                    if math.isfinite(val) and (best is None or val < best["val_loss"]):
                        best, new_best = {"epoch": epoch, "step": step, "val_loss": val}, True
                ep, t_epoch = dict(fresh_epoch), time.perf_counter()
                summary.add(summary_row)
                bar.line(
                    epoch_line(
                        description,
                        summary_row,
                        epochs=train.epochs,
                        total_steps=stop_at,
                        best=new_best,
                    )
                )
                checkpoint(epoch, 0, epoch_file=True, best_file=new_best)
            else:  # stopped inside the epoch (--max-steps or a signal)
                start_in_epoch = s
                checkpoint(epoch, s)
            if stop["signal"]:
                raise TrainingInterrupted(
                    f"{stop['signal']} at step {step}: checkpoint saved in {run_dir}; "
                    "continue with the same command and --resume"
                )
    return TrainResult(run_dir=run_dir, model=model, step=step, epoch=epoch, metrics=logged)


def local_batches(model, schema, index, patients, train: TrainConfig, info, *, pin_memory: bool):
    """(LocalBatches, dataset, validation plan) of the local path: the sampler's plan over a
    ShardIndex (random access), SM3's cases or SLIMP's patients."""
    val_plan = []
    if getattr(model.inputs, "unit", "patient") == "case":  # SM3: cases, not patients
        dataset, sampler, collate_fn = case_training_data(
            index, model, train, info, use=patients.use if patients is not None else None
        )
    else:
        dataset = PatientDataset(index, **sample_options(model, schema, train), decode=train.decode)
        infos = patient_infos(index)
        # SimCLR (two views) draws single images at random: see PatientBatchSampler.
        images_per_batch = image_batch(train, model.inputs.two_views)
        sampler = training_sampler(
            infos,
            train,
            per_image=model.inputs.two_views,
            use=patients.use if patients is not None else None,
            rank=info.rank,
            world_size=info.world_size,
        )
        collate_fn = collate
        if patients is not None and patients.validation:
            val_plan = validation_plan(
                infos,
                patients.validation,
                patients_per_batch=train.patients_per_batch,
                lesions_per_patient=train.lesions_per_patient,
                seed=train.seed,
                images_per_batch=images_per_batch,
            )
    loader = make_loader(
        dataset,
        sampler,
        workers=train.workers if train.workers is not None else default_workers(),
        prefetch=train.prefetch,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
    )
    return LocalBatches(sampler, loader), dataset, val_plan


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute the image encoder's blocks in the backward pass (timm models' own switch):
    activation memory of one block instead of all, for about a third more compute."""
    found = False
    for module in model.modules():
        setter = getattr(module, "set_grad_checkpointing", None)
        if callable(setter) and module is not model:
            setter(True)
            found = True
    if not found:
        raise SlimpError("--grad-checkpointing: this model's image encoder does not support it")


def validation_loss(
    model: nn.Module, dataset, plan: list, train: TrainConfig, device: torch.device, autocast
) -> dict[str, float]:
    """Mean loss parts over the fixed held-out batches: {"val_loss", "val_loss_...": ...}.

    Eval mode, no gradient, one process, the same batches every epoch; the global RNGs are
    untouched (resuming stays exact). Contrastive losses depend on the batch, so compare the
    curve with itself, not with the training loss. `model` may be an `SslNet`
    (`--image-ssl-weight`): the rows then carry `val_loss_ssl` too.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        with torch.no_grad():
            for items in plan:
                batch = batch_to(collate([dataset[it] for it in items]), device, model.preprocess)
                with autocast:
                    outputs = model(batch)
                losses = loss_parts(model.variant, outputs, train, D.DistInfo())
                for k, v in losses.items():
                    sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v)
    finally:
        if was_training:
            set_train_mode(model)
    return {k: v / len(plan) for k, v in sums.items()}


def _mean_over_ranks(
    values: dict[str, float], info: D.DistInfo, device: torch.device
) -> dict[str, float]:
    """Loss parts averaged over the ranks (each rank's loss covers its own patients)."""
    if not info.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t)}


def _compute_loss(variant: str, outputs: dict, train: TrainConfig, info: D.DistInfo) -> dict:
    """The training step's loss (`loss_parts`; a seam tests poison)."""
    return loss_parts(variant, outputs, train, info)


def loss_parts(variant: str, outputs: dict, train: TrainConfig, info: D.DistInfo) -> dict:
    """The variant's loss (+ W * the image SSL term when the outputs carry its views)."""
    from ..losses import add_image_ssl, compute_loss

    losses = compute_loss(
        variant,
        outputs,
        temperature=train.temperature,
        lam=train.lam,
        **D.loss_kwargs(info, outputs),
    )
    if "ssl_view1" not in outputs:
        return losses
    # the SSL rows are images, gathered (and offset) apart from the variant's own rows
    views = {"view1": outputs["ssl_view1"]}
    return add_image_ssl(
        losses,
        outputs["ssl_view1"],
        outputs["ssl_view2"],
        weight=train.image_ssl_weight,
        temperature=train.temperature,
        groups=outputs.get("ssl_groups"),
        **D.loss_kwargs(info, views),
    )


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def parameter_counts(model: nn.Module) -> dict:
    """Total and trainable parameters, overall and per part (top-level submodule: the image
    encoder, each TRACE encoder, projections, phenotype layer): compare with the paper's
    Table 9 (total) and Table 12 (trainable in continual pre-training)."""
    parts: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        part = parts.setdefault(name.split(".", 1)[0], {"total": 0, "trainable": 0})
        part["total"] += p.numel()
        part["trainable"] += p.numel() if p.requires_grad else 0
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parts": parts,
    }
