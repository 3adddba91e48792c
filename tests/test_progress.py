"""Training feedback and checkpoints: one line per epoch, summary.csv, checkpoint-best.pt by
held-out loss, a progress bar that keeps step/total and ETA at 80 columns, and `--resume`
with an optional PATH (through the installed `slimp` for pretrain and adapt)."""

from __future__ import annotations

import io
import re

import pytest
import torch
from rich.console import Console

from slimp_cli.commands.train import fill_optional_values
from slimp_cli.models.runs import BEST, LAST, SUMMARY, read_metrics, read_summary
from slimp_cli.train import pretrain
from slimp_cli.train.loop import progress_bar
from slimp_cli.train.records import EpochSummary, epoch_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 60 synthetic patients, 20% held out: 48 train, B = 8 -> 6 steps an epoch, 18 in all.
MODEL = dict(image_model="vit_test", img_size=32, tab_dim=16, embed_dim=16)
TRAIN = dict(
    patients_per_batch=8,
    lesions_per_patient=2,
    epochs=3,
    holdout=0.2,
    lr=1e-3,
    device="cpu",
    workers=0,
    log_every=1,
)
CLI = [
    "--image-model",
    "vit_test",
    "--input-size",
    "32",
    "--tab-dim",
    "16",
    "--embed-dim",
    "16",
    "-B",
    "8",
    "-N",
    "2",
    "--epochs",
    "3",
    "--holdout",
    "0.2",
    "--device",
    "cpu",
    "--workers",
    "0",
]
EPOCH_LINE = re.compile(
    r"^pretrain epoch (\d)/3  step (\d+)/\d+  train loss \d\.\d{4}  val loss \d\.\d{4}"
    r"( \(best\))?  \d+ img/s  elapsed \d:\d\d:\d\d$"
)


def test_resume_without_a_value_gets_latest_and_a_path_is_kept():
    opt = {"--resume": "latest"}
    assert fill_optional_values(["D", "--resume"], opt) == ["D", "--resume", "latest"]
    assert fill_optional_values(["D", "--resume", "--seed", "1"], opt) == [
        "D",
        "--resume",
        "latest",
        "--seed",
        "1",
    ]
    assert fill_optional_values(["--resume", "RUN", "D"], opt) == ["--resume", "RUN", "D"]
    assert fill_optional_values(["D", "--resume=RUN"], opt) == ["D", "--resume=RUN"]
    assert fill_optional_values(["D", "--", "--resume"], opt) == ["D", "--", "--resume"]


def test_progress_bar_keeps_step_count_and_eta_at_80_columns():
    console = Console(file=io.StringIO(), width=80, force_terminal=False)
    clock = [0.0]
    bar = progress_bar(console, get_time=lambda: clock[0])
    task = bar.add_task("sm3 multilabel", total=4000, info="")
    info = "loss 0.315  58 img/s  lesions 0.412  patient 2.231  ssl 1.234  lr 1.0e-04"
    for _ in range(37):
        clock[0] += 0.5  # 2 steps a second: 3963 steps left = 0:33:02
        bar.update(task, advance=1, info=info)
    console.print(bar.get_renderable())
    text = console.file.getvalue()
    assert len(text.splitlines()) == 1 and len(text.rstrip("\n")) <= 80, text
    assert "37/4000" in text and "ETA 0:33:02" in text, text
    assert "loss 0.315" in text and text.rstrip().endswith("…"), text  # the loss text is cut
    wide = Console(file=io.StringIO(), width=160, force_terminal=False)
    wide.print(bar.get_renderable())
    assert info in wide.file.getvalue()  # nothing cut when there is room


def test_epoch_summary_replaces_rows_and_resume_drops_later_epochs(tmp_path):
    def row(epoch, loss=0.5, val=0.25):
        return dict(
            epoch=epoch,
            step=6 * epoch,
            train_loss=loss,
            val_loss=val,
            lr=1e-4 / 3,
            images_per_s=12.5,
            elapsed_s=0.1 * epoch,
        )

    path = tmp_path / SUMMARY
    summary = EpochSummary(path, enabled=True, resume_epoch=None)
    for e in (1, 2, 3):
        summary.add(row(e, val=None if e == 3 else 0.25))
    assert read_summary(tmp_path) == [row(1), row(2), row(3, val=None)]  # floats exact
    resumed = EpochSummary(path, enabled=True, resume_epoch=1)
    assert [r["epoch"] for r in read_summary(tmp_path)] == [1]
    resumed.add(row(2, loss=9.0))
    resumed.add(row(2, loss=8.0))  # the same epoch again replaces its row
    assert read_summary(tmp_path) == [row(1), row(2, loss=8.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY]  # no temporaries left
    EpochSummary(path, enabled=True, resume_epoch=None)  # a fresh run starts it anew
    assert not path.exists()
    line = epoch_line("pretrain", row(2), epochs=3, total_steps=18, best=True)
    assert line == (
        "pretrain epoch 2/3  step 12/18  train loss 0.5000  val loss 0.2500 (best)  "
        "12 img/s  elapsed 0:00:00"
    )


@pytest.fixture(scope="module")
def full_run(synth_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("progress") / "full"
    pretrain(synth_shards, out, model=MODEL, train=dict(TRAIN, keep_epoch_checkpoints=True))
    return out


def test_summary_rows_are_the_epochs_of_metrics_jsonl(full_run):
    rows = read_summary(full_run)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 6), (2, 12), (3, 18)]
    train = read_metrics(full_run)  # one row a step (log_every 1)
    val = read_metrics(full_run, kind="validation")
    for r in rows:
        steps = [m for m in train if m["epoch"] == r["epoch"] - 1]
        assert len(steps) == 6
        assert r["train_loss"] == pytest.approx(sum(m["loss"] for m in steps) / 6, rel=1e-12)
        assert r["lr"] == steps[-1]["lr"]
        assert r["val_loss"] == next(v["val_loss"] for v in val if v["epoch"] == r["epoch"])
        assert r["images_per_s"] > 0 and r["elapsed_s"] > 0
    assert rows[0]["elapsed_s"] < rows[1]["elapsed_s"] < rows[2]["elapsed_s"]


def test_best_checkpoint_is_the_epoch_of_lowest_validation_loss(full_run):
    rows = read_summary(full_run)
    want = min(rows, key=lambda r: r["val_loss"])
    best = torch.load(full_run / BEST, weights_only=True)
    assert best["extra"]["best"] == {
        "epoch": want["epoch"],
        "step": want["step"],
        "val_loss": want["val_loss"],
    }
    assert best["step"] == want["step"] and best["epoch"] == want["epoch"]
    same_epoch = torch.load(
        full_run / f"checkpoint-epoch-{want['epoch']:04d}.pt", weights_only=True
    )
    for k, v in best["model"].items():
        assert torch.equal(v, same_epoch["model"][k]), k
    last = torch.load(full_run / LAST, weights_only=True)
    assert last["extra"]["best"] == best["extra"]["best"]  # the record resume starts from


def test_no_best_checkpoint_without_held_out_patients(synth_shards, tmp_path):
    out = tmp_path / "all"
    pretrain(synth_shards, out, model=MODEL, train=dict(TRAIN, holdout=0.0, epochs=1))
    assert not (out / BEST).exists()
    rows = read_summary(out)
    assert len(rows) == 1 and rows[0]["val_loss"] is None and rows[0]["train_loss"] > 0


def test_resume_keeps_the_best_so_far_and_the_summary(synth_shards, tmp_path, monkeypatch):
    """Scripted held-out losses 0.5, 0.3, 0.4: epoch 2 is best. A run stopped in epoch 3 and
    resumed must not take epoch 3 (0.4) for the best: the record survives the checkpoint."""
    import slimp_cli.train.loop as loop

    script: list[float] = []
    monkeypatch.setattr(loop, "validation_loss", lambda *a, **k: {"val_loss": script.pop(0)})

    def run(out, *, resume=False, **train):
        pretrain(synth_shards, out, model=MODEL, train=dict(TRAIN, **train), resume=resume)

    script[:] = [0.5, 0.3, 0.4]
    run(tmp_path / "full")
    script[:] = [0.5, 0.3]
    run(tmp_path / "cut", max_steps=14)
    assert torch.load(tmp_path / "cut" / BEST, weights_only=True)["step"] == 12
    script[:] = [0.4]
    run(tmp_path / "cut", resume=True, max_steps=18)
    assert not script
    for name in ("full", "cut"):
        best = torch.load(tmp_path / name / BEST, weights_only=True)["extra"]["best"]
        assert best == {"epoch": 2, "step": 12, "val_loss": 0.3}, name
    keys = ("epoch", "step", "train_loss", "val_loss", "lr")
    full, cut = read_summary(tmp_path / "full"), read_summary(tmp_path / "cut")
    assert [{k: r[k] for k in keys} for r in cut] == [{k: r[k] for k in keys} for r in full]


def test_cli_epoch_lines_and_resume_latest_path_and_checkpoint(synth_shards, tmp_path, run_slimp):
    run, fork = tmp_path / "run", tmp_path / "fork"
    res = run_slimp("pretrain", synth_shards, "--out", run, *CLI, "--max-steps", "8")
    assert res.returncode == 0, res.stderr
    lines = [m for m in map(EPOCH_LINE.match, res.stderr.splitlines()) if m]
    assert [m.group(1, 2) for m in lines] == [("1", "6")], res.stderr  # piped: still a line
    assert lines[0].group(3) == " (best)"
    assert "summary.csv" in res.stdout + res.stderr
    # --resume alone, last on the line: the run dir's checkpoint-last.pt
    res = run_slimp("pretrain", synth_shards, "--out", run, *CLI, "--max-steps", "14", "--resume")
    assert res.returncode == 0, res.stderr
    assert f"notice: resumed from step 8 (epoch 2/3) of {run / LAST}" in res.stderr
    assert [m.group(1) for m in map(EPOCH_LINE.match, res.stderr.splitlines()) if m] == ["2"]
    assert [r["epoch"] for r in read_summary(run)] == [1, 2]
    # --resume RUN (a run dir), before other options
    res = run_slimp(
        "pretrain", synth_shards, "--out", run, "--resume", run, *CLI, "--max-steps", "18"
    )
    assert res.returncode == 0, res.stderr
    assert "resumed from step 14 (epoch 3/3)" in res.stderr
    assert [r["step"] for r in read_summary(run)] == [6, 12, 18]
    # --resume FILE of another run: continued in a new --out, the same epochs as the original
    res = run_slimp(
        "pretrain", synth_shards, "--out", fork, *CLI, "--resume", run / "checkpoint-best.pt"
    )
    assert res.returncode == 0, res.stderr
    best_step = torch.load(run / BEST, weights_only=True)["step"]
    assert f"resumed from step {best_step} " in res.stderr
    keys = ("epoch", "step", "train_loss", "val_loss", "lr")
    assert [{k: r[k] for k in keys} for r in read_summary(fork)] == [
        {k: r[k] for k in keys} for r in read_summary(run)
    ]
    assert read_metrics(fork, kind="all")[-1] == read_metrics(run, kind="all")[-1]


def _one_error_line(res, *fragments):
    code = res.returncode if hasattr(res, "returncode") else res.exit_code
    assert code == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_cli_resume_refusals_are_one_line(synth_shards, tmp_path, run_slimp, run_cli):
    from slimp_cli.train import adapt as adapt_run

    run, a = tmp_path / "run", tmp_path / "a"
    pretrain(synth_shards, run, model=MODEL, train=dict(TRAIN, max_steps=2))
    tiny = dict(TRAIN, patients_per_batch=8, epochs=1, max_steps=2)
    adapt_run(run, synth_shards, a, train=tiny)
    args = ("pretrain", synth_shards, "--out")
    adapt = ("adapt", run, synth_shards, "--out")
    # the installed executable: a bad path for each command
    _one_error_line(
        run_slimp(*args, tmp_path / "new", "--resume", tmp_path / "nothere"),
        "no such run dir or checkpoint file",
    )
    _one_error_line(run_slimp(*adapt, tmp_path / "b", "--resume", tmp_path / "x.pt"), "no such")
    # the same parser in-process (no interpreter start-up): the other refusals
    _one_error_line(run_cli(*args, tmp_path / "new", "--resume", tmp_path), "no checkpoint-last")
    _one_error_line(
        run_cli(*args, run, "--resume", run / "config.json"), "not a readable slimp checkpoint"
    )
    _one_error_line(run_cli(*args, tmp_path / "empty", "--resume"), "no checkpoint-last.pt")
    _one_error_line(run_cli(*args, run, "--resume", run, "--config", run), "--config with")
    _one_error_line(run_cli(*args, run, "--resume", a), "already holds a run")
    _one_error_line(run_cli(*args, tmp_path / "new", "--resume", a), "written by `slimp adapt`")
    _one_error_line(run_cli(*adapt, tmp_path / "b", "--resume", run), "written by `slimp pretrain`")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "run"]  # nothing left behind
    # adapt through the executable: from another adapt run dir, then --resume alone
    res = run_slimp(*adapt, tmp_path / "b", "--resume", a, "--max-steps", "3")
    assert res.returncode == 0, res.stderr
    assert "resumed from step 2 (epoch 1/1)" in res.stderr
    assert torch.load(tmp_path / "b" / LAST, weights_only=True)["step"] == 3
    res = run_slimp(*adapt, tmp_path / "b", "--max-steps", "4", "--resume")
    assert res.returncode == 0 and "resumed from step 3" in res.stderr, res.stderr


def test_reconcile_best_keeps_copies_or_removes_the_best_checkpoint(tmp_path):
    from slimp_cli.models.runs import save_checkpoint
    from slimp_cli.train.loop import reconcile_best

    source, fork, rewound = tmp_path / "source", tmp_path / "fork", tmp_path / "rewound"
    for d in (source, fork, rewound):
        d.mkdir()
    record = {"epoch": 2, "step": 12, "val_loss": 0.3}
    kw = dict(optimizer=None, scheduler=None, epoch=2, step_in_epoch=0, step=12, config={})
    save_checkpoint(source / BEST, model=torch.nn.Linear(2, 2), extra={"best": record}, **kw)
    reconcile_best(source, record, source)  # the record's own file: kept
    assert (source / BEST).is_file()
    reconcile_best(fork, record, source)  # another run dir's matching file: copied
    assert (fork / BEST).read_bytes() == (source / BEST).read_bytes()
    earlier = {"epoch": 1, "step": 6, "val_loss": 0.5}
    reconcile_best(rewound, earlier, source)  # the source's is of a later epoch: not copied
    assert not (rewound / BEST).exists()
    reconcile_best(fork, earlier, fork)  # rewound before that epoch: removed
    assert not (fork / BEST).exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [BEST]
