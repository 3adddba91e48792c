"""Where training reports besides `metrics.jsonl`: TensorBoard, and plain log lines.

- `open_mirror(report_to, run_dir, resume_step)`: `--report-to tensorboard` writes every
  metrics.jsonl row as TensorBoard scalars under `RUN/tensorboard/` (tag `train/<key>`, x =
  the row's step; `val/<name>` for a key `val_<name>` of held-out evaluation). TensorBoard is an optional
  dependency (`pip install 'slimp[tensorboard]'`); without it the run stops before training
  with a one-line error. On `--resume`, events past the checkpoint's step are purged, as the
  rows of metrics.jsonl are.
- `log_line(description, row, total)`: the plain line printed every `--log-every` steps when
  stderr is not a terminal (SLURM, nohup, a pipe), where a progress bar would only appear at
  the end.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SlimpError

REPORTERS = ("none", "tensorboard")
TENSORBOARD_DIR = "tensorboard"
# Row keys that are coordinates, not metrics.
_AXES = ("step", "epoch")


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
        for key, v in row.items():
            if key in _AXES or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            self.writer.add_scalar(tag, float(v), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_mirror(report_to: str, run_dir: Path, resume_step: int | None = None):
    """A mirror of metrics.jsonl for `report_to` ("none" -> None)."""
    if report_to == "none":
        return None
    if report_to == "tensorboard":
        return TensorBoardMirror(Path(run_dir) / TENSORBOARD_DIR, resume_step)
    raise SlimpError(f"unknown --report-to '{report_to}'; choose {' or '.join(REPORTERS)}")


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
