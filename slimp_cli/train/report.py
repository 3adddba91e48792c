"""Where training reports besides `metrics.jsonl`: TensorBoard, Weights & Biases, and plain
log lines.

- `open_mirror(report_to, run_dir, resume_step)`: `--report-to` takes a comma list of
  `tensorboard` and `wandb` (or `none`, the default); every metrics.jsonl row goes to each.
  - tensorboard: scalars under `RUN/tensorboard/` (tag `train/<key>`, x = the row's step;
    `val/<name>` for a key `val_<name>` of held-out evaluation). On `--resume`, events past
    the checkpoint's step are purged, as the rows of metrics.jsonl are.
  - wandb: one W&B run per run dir, files under `RUN/wandb/`, config = config.json's model,
    train and environment blocks, the same tags as TensorBoard plotted against `step` (a
    metric of its own, so a resumed run may log a step again without W&B dropping it). The
    W&B run id is kept in `RUN/wandb/slimp-run-id`, so `--resume` continues the same W&B
    run. `WANDB_MODE=offline` logs without a network (`wandb sync RUN/wandb/offline-run-*`
    uploads later); the project is `$WANDB_PROJECT`, else "slimp".
  Both packages are optional dependencies (`pip install 'slimp[tensorboard]'`,
  `'slimp[wandb]'`), imported only when asked for; without one, the run stops before
  training with a one-line error naming the extra.
- `log_line(description, row, total)`: the plain line printed every `--log-every` steps when
  stderr is not a terminal (SLURM, nohup, a pipe), where a progress bar would only appear at
  the end.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from ..core.errors import SlimpError
from ..core.paths import write_text

REPORTERS = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
WANDB_ID_FILE = "slimp-run-id"
# Row keys that are coordinates, not metrics.
_AXES = ("step", "epoch")


def parse_report_to(text: str) -> tuple[str, ...]:
    """The reporters of a `--report-to` value: "tensorboard,wandb" -> ("tensorboard", "wandb");
    "none" -> (). Unknown names, an empty list and "none" beside a reporter are refused."""
    if not isinstance(text, str):
        raise SlimpError(f"report_to must be a comma list of {', '.join(REPORTERS)}, got {text!r}")
    names = [t.strip() for t in text.split(",")]
    bad = [t for t in names if t not in REPORTERS]
    if bad or not names:
        raise SlimpError(
            f"--report-to {text!r}: {', '.join(repr(b) for b in bad) or 'nothing'} is not one of "
            f"{', '.join(REPORTERS)} (a comma list, e.g. tensorboard,wandb)"
        )
    if "none" in names:
        if len(set(names)) > 1:
            raise SlimpError(f"--report-to {text!r}: 'none' cannot be combined with a reporter")
        return ()
    return tuple(dict.fromkeys(names))


def _scalars(row: dict) -> dict[str, float]:
    """A metrics.jsonl row's numbers under their tags: `train/<key>`, `val/<name>`."""
    out = {}
    for key, v in row.items():
        if key in _AXES or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"] = float(v)
    return out


class TensorBoardMirror:
    """metrics.jsonl rows -> TensorBoard scalars (rank 0 only)."""

    def __init__(self, log_dir: Path, resume_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise SlimpError(
                "--report-to tensorboard needs the tensorboard package: "
                "pip install 'slimp[tensorboard]' (or pip install tensorboard)"
            ) from None
        self.writer = SummaryWriter(
            log_dir=str(log_dir), purge_step=None if resume_step is None else resume_step + 1
        )

    def write(self, row: dict) -> None:
        step = int(row.get("step", 0))
        for tag, v in _scalars(row).items():
            self.writer.add_scalar(tag, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class WandbMirror:
    """metrics.jsonl rows -> a Weights & Biases run (rank 0 only).

    `wandb` is imported here, not at module level: it is an optional extra and slow to import.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise SlimpError(
                "--report-to wandb needs the wandb package: pip install 'slimp[wandb]' "
                "(or pip install wandb); WANDB_MODE=offline logs without a network"
            ) from None
        run_dir = Path(run_dir)
        folder = run_dir / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / WANDB_ID_FILE
        # A resumed slimp run continues its W&B run; a fresh one (or one whose id was lost)
        # starts another, so two trainings never mix their curves under one id.
        run_id = None
        if resume_step is not None and id_file.is_file():
            run_id = id_file.read_text().strip() or None
        if run_id is None:
            run_id = uuid.uuid4().hex[:12]
        config = {}
        if (run_dir / "config.json").is_file():
            saved = json.loads((run_dir / "config.json").read_text())
            config = {k: saved[k] for k in ("model", "train", "environment") if k in saved}
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "slimp",
                name=run_dir.name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=config,
                # no console capture: it would wrap stdout/stderr under the progress bar and
                # slimp's one-line errors
                settings=wandb.Settings(console="off"),
            )
        except Exception as exc:  # wandb raises its own error types (no login, no network)
            raise SlimpError(
                f"--report-to wandb: cannot start a W&B run ({_first_line(exc)}); "
                "WANDB_MODE=offline logs to RUN/wandb/ without a network"
            ) from None
        write_text(id_file, run_id + "\n")
        # `step` is a metric of its own (not W&B's internal, strictly increasing step): the
        # rows a --resume replays after the checkpoint would otherwise be dropped.
        self.run.define_metric("step")
        for prefix in ("train", "val"):
            self.run.define_metric(f"{prefix}/*", step_metric="step")

    def write(self, row: dict) -> None:
        self.run.log({"step": int(row.get("step", 0)), **_scalars(row)})

    def close(self) -> None:
        self.run.finish()


class Mirrors:
    """Several mirrors fed the same rows."""

    def __init__(self, mirrors: list) -> None:
        self.mirrors = mirrors

    def write(self, row: dict) -> None:
        for m in self.mirrors:
            m.write(row)

    def close(self) -> None:
        for m in self.mirrors:
            m.close()


def open_mirror(report_to: str, run_dir: Path, resume_step: int | None = None):
    """The mirrors of metrics.jsonl that `report_to` names (a comma list; "none" -> None).

    Every reporter is opened (and its package imported) here, before the first step, so a
    missing package stops the run before it trains."""
    opened = []
    try:
        for name in parse_report_to(report_to):
            if name == "tensorboard":
                opened.append(TensorBoardMirror(Path(run_dir) / TENSORBOARD_DIR, resume_step))
            else:
                opened.append(WandbMirror(Path(run_dir), resume_step))
    except BaseException:
        for m in opened:
            m.close()
        raise
    return Mirrors(opened) if opened else None


def log_line(description: str, row: dict, total: int) -> str:
    """`pretrain step 20/300 (epoch 1) loss 2.0794 lesions 1.9459 ... lr 1.0e-04 57 img/s`."""
    parts = [f"{description} step {row.get('step', 0)}/{total} (epoch {row.get('epoch', 0) + 1})"]
    for key, v in row.items():
        if key in _AXES or key in ("lr", "images_per_s") or not isinstance(v, (int, float)):
            continue
        parts.append(f"{key.replace('loss_', '')} {v:.4f}")
    if "lr" in row:
        parts.append(f"lr {row['lr']:.1e}")
    if "images_per_s" in row:
        parts.append(f"{row['images_per_s']:.0f} img/s")
    return "  ".join(parts)
