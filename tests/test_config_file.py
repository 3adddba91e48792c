"""`pretrain/adapt --config FILE`: a hand-written JSON or YAML file of options by their own
names (the saved config.json still works, tests/test_train_records.py), checked key by key,
overridden by the command line, recorded in the new run's config.json."""

from __future__ import annotations

import json

import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.models.runs import read_config
from slimp_cli.train.config_file import read_config_file

YAML = """\
# a first recipe, by hand
image-model: vit_test
input_size: 32
tab_dim: 16
embed-dim: 16
patients-per-batch: 8
lesions_per_patient: 2
epochs: 1
max_steps: 2
lr: 1e-3            # YAML 1.1 reads this as a string: still a number for a float option
weight_decay: 0.01
device: cpu
workers: 0
augment: false
holdout: 0.2
"""


@pytest.fixture(scope="module")
def yaml_run(synth_shards, tmp_path_factory):
    """pretrain --config recipe.yaml --lr 0.002 through the installed executable."""
    from conftest import _run_slimp

    where = tmp_path_factory.mktemp("config_file")
    recipe = where / "recipe.yaml"
    recipe.write_text(YAML)
    out = where / "run"
    res = _run_slimp("pretrain", synth_shards, "--out", out, "--config", recipe, "--lr", "0.002")
    assert res.returncode == 0, res.stderr
    return out, where


def test_a_hand_written_yaml_file_sets_the_options_and_the_command_line_overrides_it(yaml_run):
    out, _ = yaml_run
    cfg = read_config(out)
    assert cfg["model"]["image_model"] == "vit_test" and cfg["model"]["img_size"] == 32
    assert cfg["model"]["tab_dim"] == 16 and cfg["model"]["embed_dim"] == 16
    train = cfg["train"]
    assert (train["patients_per_batch"], train["lesions_per_patient"]) == (8, 2)
    assert train["max_steps"] == 2 and train["weight_decay"] == 0.01
    assert train["holdout"] == 0.2 and train["workers"] == 0
    assert train["lr"] == 0.002  # the command line wins over the file's 1e-3


def test_adapt_takes_a_json_file_with_tune(yaml_run, synth_shards, run_slimp):
    src, where = yaml_run
    recipe = where / "adapt.json"
    recipe.write_text(
        json.dumps(
            {
                "tune": "all",
                "patients_per_batch": 8,
                "lesions-per-patient": 2,
                "epochs": 1,
                "max-steps": 1,
                "device": "cpu",
                "workers": 0,
                "report_to": [],
            }
        )
    )
    out = where / "adapted"
    res = run_slimp("adapt", src, synth_shards, "--out", out, "--config", recipe, "--epochs", "2")
    assert res.returncode == 0, res.stderr
    cfg = read_config(out)
    assert cfg["tune"] == "all" and cfg["train"]["max_steps"] == 1
    assert cfg["train"]["patients_per_batch"] == 8 and cfg["train"]["epochs"] == 2


BAD = [
    (
        "patients_per_batchh: 8\n",
        ".yaml",
        "unknown key 'patients_per_batchh' (did you mean 'patients_per_batch'?)",
    ),
    ('{"lr": "fast"}', ".json", "'lr' must be a number, got 'fast'"),
    ("epochs: 2.5\n", ".yml", "'epochs' must be an integer, got 2.5"),
    ("out: somewhere\n", ".yaml", "'out' is given on the command line"),
    ("epochs: [1\n", ".yaml", "not valid YAML"),
    ("epochs = 1\n", ".toml", "give a .json, .yaml or .yml file"),
]


@pytest.mark.parametrize(("content", "suffix", "expected"), BAD)
def test_bad_files_are_one_line_naming_the_key(content, suffix, expected, tmp_path):
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(content)
    with pytest.raises(SlimpError) as err:
        read_config_file(bad, command="pretrain")
    message = str(err.value)
    assert message.startswith(f"--config {bad}: ") and "\n" not in message
    assert expected in message


def test_bad_files_exit_1_in_one_line_through_the_executable(synth_shards, tmp_path, run_slimp):
    for content, suffix, expected in BAD[:2]:  # each start of the executable costs seconds
        bad = tmp_path / f"bad{suffix}"
        bad.write_text(content)
        res = run_slimp("pretrain", synth_shards, "--out", tmp_path / "r", "--config", bad)
        assert res.returncode == 1, res.stderr
        assert res.stderr == f"error: --config {bad}: {expected}\n"
        assert not (tmp_path / "r").exists()  # refused before anything was written


def test_the_library_reads_sections_aliases_and_refuses_what_does_not_apply(tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"model": {"input-size": 64}, "train": {"grad_clip": None}}))
    cfg = read_config_file(nested, command="pretrain")
    assert cfg.model == {"img_size": 64} and cfg.train == {"grad_clip": None}
    lists = tmp_path / "l.yaml"
    lists.write_text("report_to: [tensorboard, wandb]\naugment: true\n")
    assert read_config_file(lists, command="pretrain").train == {
        "report_to": "tensorboard,wandb",
        "augment": True,
    }
    with pytest.raises(SlimpError, match="'augment' must be true or false, got 'yes please'"):
        lists.write_text("augment: yes please\n")
        read_config_file(lists, command="pretrain")
    with pytest.raises(SlimpError, match="'variant' is a model option: adapt's model"):
        lists.write_text("variant: flat\n")
        read_config_file(lists, command="adapt")
    with pytest.raises(SlimpError, match="'tune' is an option of adapt"):
        lists.write_text("tune: all\n")
        read_config_file(lists, command="pretrain")
    with pytest.raises(SlimpError, match="'lr' is given twice"):
        lists.write_text("lr: 0.1\ntrain: {lr: 0.2}\n")
        read_config_file(lists, command="pretrain")
    with pytest.raises(SlimpError, match="holds a list"):
        lists.write_text("- lr\n")
        read_config_file(lists, command="pretrain")
    with pytest.raises(SlimpError, match="no such file"):
        read_config_file(tmp_path / "missing.yaml", command="adapt")


@pytest.mark.parametrize(
    "text, expected",
    [("holdout: official\n", "official"), ("holdout: 0.3\n", 0.3), ("holdout: '0.3'\n", 0.3)],
)
def test_a_number_or_string_option_takes_either(text, expected, tmp_path):
    """`holdout` is a fraction or "official" (TrainConfig: float | str)."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert read_config_file(path, command="pretrain").train == {"holdout": expected}
    path.write_text("holdout: [0.3]\n")
    with pytest.raises(SlimpError, match="'holdout' must be a number or a string"):
        read_config_file(path, command="pretrain")
