"""pretrain and adapt are one training entry (`train.stage.run_stage`) driven by the `Stage`
table; `slimp pretrain` and `slimp adapt` share one option table (`commands.options`)."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import typer
from conftest import TINY_MODEL, _tiny_train
from typer.testing import CliRunner

from slimp_cli.core.errors import SlimpError
from slimp_cli.models.runs import read_config
from slimp_cli.train import adapt_run, pretrain_run
from slimp_cli.train.stage import ADAPT, PRETRAIN, STAGES, Stage, run_stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# one step of B patients with one lesion each: the run exists only for its config.json
ONE_STEP = dict(lesions_per_patient=1, max_steps=1, device="cpu", workers=0)


def test_adapt_takes_its_defaults_and_frozen_layers_from_its_stage(pad_run, pad_shards, tmp_path):
    # The paper's continual pre-training (Sec. 4.2): B = 64 patients, 100 epochs, embeddings only.
    result = adapt_run(pad_run, pad_shards, tmp_path / "adapted", train=ONE_STEP)
    cfg = read_config(result.run_dir)
    assert cfg["kind"] == "adapt" and cfg["tune"] == "embeddings"
    assert (cfg["train"]["patients_per_batch"], cfg["train"]["epochs"]) == (64, 100)
    assert cfg["train"]["positive_sampling"] is False
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    ids = {id(p) for p in result.model.embedding_parameters()}
    embeddings = {n for n, p in result.model.named_parameters() if id(p) in ids}
    assert trainable == set(cfg["trainable"]) == embeddings
    assert len(trainable) < len(list(result.model.parameters()))  # the rest is frozen
    assert all(
        n.startswith(("image_encoder.patch_embed.", "lesion_encoder.", "patient_encoder."))
        for n in trainable
    )


def test_a_changed_stage_changes_adapt(pad_run, pad_shards, tmp_path, monkeypatch):
    # adapt_run is the ADAPT stage: another table row (everything tuned, 3 epochs of 8
    # patients) is what it then trains, with no other code changed.
    row = dataclasses.replace(
        ADAPT, train_defaults={"patients_per_batch": 8, "epochs": 3}, tunes=("all",)
    )
    # the module (slimp_cli.train's attribute `adapt` is the function)
    monkeypatch.setattr(importlib.import_module("slimp_cli.train.adapt"), "ADAPT", row)
    result = adapt_run(pad_run, pad_shards, tmp_path / "all", train=ONE_STEP)
    cfg = read_config(result.run_dir)
    assert cfg["tune"] == "all"
    assert (cfg["train"]["patients_per_batch"], cfg["train"]["epochs"]) == (8, 3)
    assert all(p.requires_grad for p in result.model.parameters())
    with pytest.raises(SlimpError, match="unknown --tune 'embeddings'; choose all"):
        adapt_run(pad_run, pad_shards, tmp_path / "bad", train=ONE_STEP, tune="embeddings")


def test_pretrain_is_the_pretrain_stage(pad_shards, tmp_path):
    result = pretrain_run(pad_shards, tmp_path / "run", model=TINY_MODEL, train=_tiny_train(1))
    cfg = read_config(result.run_dir)
    assert cfg["kind"] == "pretrain" and "tune" not in cfg and "source" not in cfg
    assert all(p.requires_grad for p in result.model.parameters())  # tunes () = everything
    # the same entry with the stage's defaults replaced: they reach the run's config
    row = dataclasses.replace(PRETRAIN, train_defaults={"epochs": 2, "lam": 0.5})
    given = dict(patients_per_batch=8, lesions_per_patient=4, max_steps=1, device="cpu", workers=0)
    result = run_stage(row, pad_shards, tmp_path / "row", model=TINY_MODEL, train=given)
    train = read_config(result.run_dir)["train"]
    assert (train["epochs"], train["lam"]) == (2, 0.5)
    # a stage that trains everything refuses --tune; adapt refuses SM3 (SLIMP's continuation)
    with pytest.raises(SlimpError, match="takes no --tune"):
        run_stage("pretrain", pad_shards, tmp_path / "t", model=TINY_MODEL, tune="all")
    assert not (tmp_path / "t").exists()  # nothing left behind


def test_stage_arguments_are_checked():
    assert set(STAGES) == {"pretrain", "adapt"} and STAGES["adapt"] is ADAPT
    with pytest.raises(ValueError, match="model_from"):
        Stage(name="x", model_from="scratch")
    with pytest.raises(ValueError, match="TrainConfig"):
        Stage(name="x", train_defaults={"epochz": 3})
    with pytest.raises(ValueError, match="no methods"):
        Stage(name="x", methods=())
    with pytest.raises(TypeError):
        Stage("x")  # keyword-only
    with pytest.raises(TypeError):
        ADAPT.train_defaults["epochs"] = 1  # the table cannot be edited in place
    with pytest.raises(SlimpError, match="internal"):
        run_stage(ADAPT, "data", "out")  # a source stage needs its source run


def test_shared_options_reach_each_command_once():
    from slimp_cli.commands.options import Shared, with_options

    table = (
        Shared(name="alpha", annotation=int | None),
        Shared(name="beta", annotation=int | None, commands=("one",)),
    )
    seen = {}

    def make(command):
        @with_options(command, after="first", options=table)
        def cmd(first: int = typer.Option(0, "--first"), last: int = typer.Option(0), **options):
            seen[command] = dict(options, first=first, last=last)

        return cmd

    app = typer.Typer()
    app.command("one")(make("one"))
    app.command("two")(make("two"))
    runner = CliRunner()
    r = runner.invoke(app, ["one", "--alpha", "1", "--beta", "2", "--first", "3"])
    assert r.exit_code == 0, r.output
    assert seen["one"] == {"alpha": 1, "beta": 2, "first": 3, "last": 0}
    r = runner.invoke(app, ["two", "--alpha", "1"])
    assert r.exit_code == 0 and seen["two"] == {"alpha": 1, "first": 0, "last": 0}
    assert runner.invoke(app, ["two", "--beta", "2"]).exit_code == 2  # not an option of two
    # order of the signature: own before `after`, the table, then the rest of the own
    assert list(typer.main.get_command(app).commands["one"].params[i].name for i in range(4)) == [
        "first",
        "alpha",
        "beta",
        "last",
    ]


def test_pretrain_and_adapt_declare_the_training_options_once():
    from slimp_cli.cli import app
    from slimp_cli.commands.train import TRAINING_OPTIONS

    commands = typer.main.get_command(app).commands
    params = {c: {p.name: p for p in commands[c].params} for c in ("pretrain", "adapt")}
    for option in TRAINING_OPTIONS:
        takers = option.commands or ("pretrain", "adapt")
        for c in ("pretrain", "adapt"):
            assert (option.name in params[c]) == (c in takers), (option.name, c)
        if len(takers) == 2:
            a, b = (params[c][option.name] for c in takers)
            assert (a.opts, a.help, a.default) == (b.opts, b.help, b.default)
    assert {"images_per_batch", "decode"} <= set(params["pretrain"]) - set(params["adapt"])
