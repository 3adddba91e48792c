"""The CLI contract, through the installed `slimp` executable in a subprocess: exit 2 with the
usage message for bad usage, 1 with one line for a user error, 0 for --version; choices shown in
--help; output folders created before any computing."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from slimp_cli import __version__
from slimp_cli.commands import choices
from slimp_cli.core.errors import SlimpError

BAD_USAGE = [
    ("probe", "--bogus"),  # unknown option
    ("probe",),  # missing argument
    ("probe", "X.h5", "--k", "abc"),  # not an int
    ("frobnicate",),  # unknown command
    ("probe", "X.h5", "--split", "bogus"),  # not one of the choices
    ("probe", "X.h5", "--method", "linear,svm"),  # a comma list with an unknown value
    ("pretrain", "DATA", "--out", "RUN", "--variant", "bogus"),
    ("adapt", "RUN", "DATA", "--out", "RUN2", "--tune", "some"),
    ("extrapolate", "A.h5", "B.h5", "--strategy", "xyz"),
    ("embed", "RUN", "DATA", "--out", "X.h5", "--device", "gpu"),
    ("ingest", "pad-ufes-20", "SRC", "OUT", "--workers", "-1"),
    ("embed", "RUN", "DATA", "--out", "X.h5", "--workers", "-1"),  # issue 13's case: usage
]


@pytest.mark.parametrize("args", BAD_USAGE, ids=lambda a: " ".join(a))
def test_bad_usage_exits_2_with_the_usage_message(args, run_slimp, tmp_path):
    res = run_slimp(*args, timeout=120)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Usage: slimp" in res.stderr and "Error" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_version_exits_0(run_slimp):
    res = run_slimp("--version", timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"slimp {__version__} (python ")
    assert "torch " in res.stdout and "timm " in res.stdout


def test_a_user_error_is_one_line_and_exit_1(run_slimp, tmp_path):
    res = run_slimp("probe", tmp_path / "missing.h5", timeout=120)
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr


def test_help_shows_the_choices(run_slimp):
    wide = {**os.environ, "COLUMNS": "300"}  # no wrapping inside the option table
    res = run_slimp("probe", "--help", timeout=120, env=wide)
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for values in (choices.LABELS, choices.SPLITS, choices.TASKS):
        assert "|".join(values) in text.replace(" ", ""), values


def test_choices_equal_the_library_constants():
    """The CLI spells its choices itself (fast --help); they must be the library's."""
    from slimp_cli.eval.probe import LABELS, METHODS
    from slimp_cli.eval.splits import SPLITS
    from slimp_cli.features.store import LEVELS, PSEUDO_STRATEGIES
    from slimp_cli.models.config import VARIANTS
    from slimp_cli.train.adapt import TUNES
    from slimp_cli.train.report import REPORTERS
    from slimp_cli.train.train_config import METHODS as TRAIN_METHODS

    assert choices.VARIANTS == VARIANTS
    assert choices.METHODS == TRAIN_METHODS
    assert choices.TUNES == TUNES
    assert choices.LABELS == LABELS
    assert choices.SPLITS == SPLITS
    assert choices.STRATEGIES == PSEUDO_STRATEGIES
    assert choices.PROBE_METHODS == METHODS
    assert choices.LEVELS == LEVELS
    assert choices.REPORT_TO == REPORTERS


def test_probe_creates_the_json_folder(tmp_path, run_slimp, write_store):
    rng = np.random.default_rng(0)
    n = 60
    store = write_store(
        tmp_path / "s.h5",
        features={"image": rng.normal(size=(n, 4)).astype(np.float32)},
        patient_id=np.arange(n),
        label=np.arange(n) % 2,
    )
    out = tmp_path / "new" / "deeper" / "p.json"
    res = run_slimp("probe", store, "--seeds", "0", "--method", "knn", "--json", out)
    assert res.returncode == 0, res.stderr
    assert out.is_file()


def test_an_impossible_output_folder_is_refused_before_computing(tmp_path, run_slimp):
    """`--json blocker/p.json` where `blocker` is a file: exit 1 naming --json, before the
    store is even opened (the store does not exist: that error would come first otherwise)."""
    (tmp_path / "blocker").write_text("a file")
    res = run_slimp("probe", tmp_path / "missing.h5", "--json", tmp_path / "blocker" / "p.json")
    assert res.returncode == 1
    assert res.stderr.startswith("error: --json") and "not a folder" in res.stderr, res.stderr


def test_embed_creates_the_out_folder(pad_run, pad_shards, tmp_path, run_slimp):
    out = tmp_path / "feats" / "pad.h5"
    res = run_slimp(
        "embed", pad_run, pad_shards, "--out", out, "--batch-size", "128", "--device", "cpu"
    )
    assert res.returncode == 0, res.stderr
    assert out.is_file()


class _UsageError(Exception):
    """Shaped like click's UsageError, of no click package (as a vendored copy's would be)."""

    exit_code = 2

    def show(self):
        print("Usage: slimp ...\nError: bad", file=sys.stderr)


class Abort(RuntimeError):
    """Named like click's Abort (Ctrl-C while parsing), of no click package."""


@pytest.mark.parametrize(
    "raised, code",
    [(_UsageError(), 2), (Abort(), 130), (KeyboardInterrupt(), 130), (SlimpError("x"), 1)],
    ids=["usage", "abort", "ctrl-c", "user-error"],
)
def test_exit_codes_do_not_depend_on_which_click_raised(monkeypatch, capsys, raised, code):
    import slimp_cli.cli as cli

    def app(**kwargs):
        raise raised

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as exc:
        cli.main(["probe"])
    assert exc.value.code == code
    assert "Traceback" not in capsys.readouterr().err


def test_choices_complete_in_the_shell(run_slimp):
    env = {
        **os.environ,
        "_SLIMP_COMPLETE": "complete_bash",
        "COMP_WORDS": "slimp probe x.h5 --label ",
        "COMP_CWORD": "4",
    }
    res = run_slimp(timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == list(choices.LABELS)
