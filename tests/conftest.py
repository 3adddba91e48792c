"""Shared fixtures: ingested real data (skipped when ../shared/data is absent) and a generated cohort.

Session-scoped so the whole test suite ingests each dataset once. Images are small (64 px for
real data, 32 px for the generated cohort) to keep the suite fast on 2 CPU cores.

    pad_shards     -> Path of an ingested PAD-UFES-20 subset (418 patients, 531 images)
    derm7pt_shards -> Path of an ingested Derm7pt subset (657 patients, no patient features)
    synth_dir      -> Path of a generated cohort in the csv layout (60 patients, 32 px)
    synth_shards   -> Path of that cohort ingested
    paired_dir     -> Path of a generated paired cohort (synth --paired: 64 cases, 32 px)
    paired_shards  -> Path of that cohort ingested
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from slimp_cli.core.paths import shared_data_dir
from slimp_cli.features.store import FeatureStoreWriter

TEST_IMAGE_SIZE = 64
SYNTH_PATIENTS = 60
SYNTH_IMAGE_SIZE = 32


def shared_path(*parts: str) -> Path:
    """A path under the shared real data; skips the test with a clear reason when absent."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set SLIMP_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared():
    """The `shared_path` function: tests call shared("formats", "ph2") and skip when absent."""
    return shared_path


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pad_source() -> Path:
    return shared_path("pad_ufes_20")


@pytest.fixture(scope="session")
def derm7pt_source() -> Path:
    return shared_path("derm7pt")


@pytest.fixture(scope="session")
def pad_shards(tmp_path_factory, pad_source) -> Path:
    from slimp_cli.ingest import ingest

    out = tmp_path_factory.mktemp("pad_shards")
    ingest("pad-ufes-20", pad_source, out, image_size=TEST_IMAGE_SIZE, workers=2)
    return out


@pytest.fixture(scope="session")
def derm7pt_shards(tmp_path_factory, derm7pt_source) -> Path:
    from slimp_cli.ingest import ingest

    out = tmp_path_factory.mktemp("derm7pt_shards")
    ingest("derm7pt", derm7pt_source, out, image_size=TEST_IMAGE_SIZE, workers=2)
    return out


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from slimp_cli.ingest.synth import generate_cohort

    out = tmp_path_factory.mktemp("synth_cohort")
    generate_cohort(out, patients=SYNTH_PATIENTS, seed=0, image_size=SYNTH_IMAGE_SIZE)
    return out


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory, synth_dir) -> Path:
    from slimp_cli.ingest import ingest

    out = tmp_path_factory.mktemp("synth_shards")
    ingest("synth", synth_dir, out, image_size=SYNTH_IMAGE_SIZE, workers=1)
    return out


PAIRED_CASES = 64


@pytest.fixture(scope="session")
def paired_dir(tmp_path_factory) -> Path:
    """A generated paired cohort (`slimp synth --paired`): 64 cases, 32 px, 1 clinical image missing."""
    from slimp_cli.ingest.synth_paired import generate_paired_cohort

    out = tmp_path_factory.mktemp("paired_cohort")
    generate_paired_cohort(out, cases=PAIRED_CASES, seed=0, image_size=SYNTH_IMAGE_SIZE)
    return out


@pytest.fixture(scope="session")
def paired_shards(tmp_path_factory, paired_dir) -> Path:
    """`paired_dir` ingested (`slimp ingest synth`)."""
    from slimp_cli.ingest import ingest

    out = tmp_path_factory.mktemp("paired_shards")
    ingest("synth", paired_dir, out, image_size=SYNTH_IMAGE_SIZE, workers=1)
    return out


def _write_store(
    path: Path,
    *,
    features: dict[str, np.ndarray],
    patient_id: np.ndarray,
    label: np.ndarray,
    malignant: np.ndarray | None = None,
    classes: list[str] | None = None,
    raw: dict[str, tuple[np.ndarray, list[str], list[str]]] | None = None,
    phenotype: tuple[np.ndarray, np.ndarray] | None = None,
    config: dict | None = None,
    schema: dict | None = None,
    chunk: int = 37,
) -> Path:
    """Write a store from in-memory arrays in odd-sized chunks (exercises chunked appends)."""
    n = len(label)
    malignant = np.asarray(label) % 2 if malignant is None else malignant
    classes = classes or [f"c{i}" for i in range(int(np.max(label)) + 1)]
    raw = raw or {}
    with FeatureStoreWriter(
        path,
        n=n,
        dims={k: v.shape[1] for k, v in features.items()},
        config=config or {"model": "test"},
        schema=schema or {"name": "synthetic"},
        classes=classes,
        variant="nested",
        raw_columns={k: (v[1], v[2]) for k, v in raw.items()},
        chunk_rows=16,
    ) as w:
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            w.append(
                lesion_id=[f"L{i}" for i in range(s, e)],
                patient_id=[str(p) for p in patient_id[s:e]],
                label=label[s:e],
                malignant=malignant[s:e],
                features={k: v[s:e] for k, v in features.items()},
                raw={k: v[0][s:e] for k, v in raw.items()},
            )
        if phenotype is not None:
            w.set_phenotype(*phenotype)
    return path


@pytest.fixture()
def write_store():
    """`write_store(path, *, features, patient_id, label, ...)`: a store from in-memory arrays."""
    return _write_store


class CliResult(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _run_cli(*args) -> CliResult:
    """Run the real `slimp` entry point (`cli.main`) in-process, capturing its streams."""
    from typer.testing import CliRunner

    from slimp_cli.cli import main

    runner = CliRunner()
    code = 0
    with runner.isolation() as (out, err, *_):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return CliResult(code, stdout, stderr)


@pytest.fixture()
def run_cli():
    """`run_cli("probe", store, ...)` -> CliResult(exit_code, stdout, stderr) of `cli.main`."""
    return _run_cli


# Tiny models for CPU tests: a 2-block ViT on 32 px images, TRACE d = 32.
TINY_MODEL = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)


def _tiny_train(steps: int = 6):
    from slimp_cli.train import TrainConfig

    return TrainConfig(
        patients_per_batch=8,
        lesions_per_patient=4,
        epochs=1,
        max_steps=steps,
        lr=1e-3,
        device="cpu",
        workers=0,
        seed=0,
    )


@pytest.fixture()
def tiny_train():
    """`tiny_train(steps)`: a TrainConfig for a few CPU steps of a tiny model."""
    return _tiny_train


@pytest.fixture(scope="session")
def pad_run(tmp_path_factory, pad_shards) -> Path:
    """A tiny nested model pre-trained for 6 steps on the PAD subset (a run dir)."""
    from slimp_cli.models.config import ModelConfig
    from slimp_cli.train import pretrain

    out = tmp_path_factory.mktemp("pad_run") / "run"
    return pretrain(
        pad_shards, out, model=ModelConfig(variant="nested", **TINY_MODEL), train=_tiny_train()
    )


@pytest.fixture(scope="session")
def pad_store(tmp_path_factory, pad_run, pad_shards) -> Path:
    """`pad_run`'s feature store of the PAD subset."""
    from slimp_cli.features.embed import embed

    out = tmp_path_factory.mktemp("stores") / "pad.h5"
    return embed(pad_run, pad_shards, out, batch_size=50)


@pytest.fixture(scope="session")
def trained_pad(pad_shards, tmp_path_factory):
    """~100 steps of a tiny nested model on the PAD shards."""
    import torch

    from slimp_cli.train import pretrain_run

    out = tmp_path_factory.mktemp("pad_run") / "run"
    torch.set_num_threads(1)
    # PAD-UFES-20 has 1.27 lesions per patient: most patients contribute an exactly-zero inner
    # loss, so with lambda = 0.9 the total is dominated by how many multi-lesion patients a
    # batch happens to hold. lambda = 0.5 lets the outer (patient) loss show in the total.
    result = pretrain_run(
        pad_shards,
        out,
        model=TINY_MODEL,
        train=dict(
            workers=0,
            device="cpu",
            log_every=1,
            patients_per_batch=8,
            lesions_per_patient=4,
            epochs=3,  # 376 training patients (10% held out) / B=8: 47 steps an epoch
            max_steps=100,
            warmup_steps=5,
            lr=1e-3,
            lam=0.5,
        ),
    )
    return result


def skip_unless_ci(reason: str) -> None:
    """Skip a test this machine cannot run (saying why), except under `.ci/run` (SLIMP_CI=1),
    where CI must run every test: there the same reason fails it."""
    if os.environ.get("SLIMP_CI"):
        pytest.fail(f"{reason} (SLIMP_CI=1: CI must run this test)")
    pytest.skip(reason=reason)


def slimp_executable() -> str:
    """The installed `slimp` console script beside this Python (what a user runs)."""
    exe = Path(sys.executable).with_name("slimp")
    assert exe.exists(), f"{exe} not found: install the package (make install)"
    return str(exe)


def _run_slimp(*args, timeout: int = 600, env: dict | None = None):
    """Run the installed `slimp` executable in a subprocess (exit code, stdout, stderr)."""
    import subprocess

    return subprocess.run(
        [slimp_executable(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture()
def run_slimp():
    """`run_slimp(*args)` -> CompletedProcess of the installed `slimp` executable."""
    return _run_slimp


# Files whose tests take minutes (measured with `--durations=30` on 2 cores: the paper-tables
# pipeline, SM3's acceptance run, the CLI pipelines, the README walkthrough). pytest-xdist's
# `--dist loadfile` hands out files in collection order, so these go first: a long file
# started last would leave the other worker idle at the end.
SLOW_FILES = (
    "test_paper_tables.py",
    "test_sm3.py",
    "test_pipeline.py",
    "test_one_line_errors.py",
    "test_readme.py",
    "test_progress.py",
    "test_concurrent_writers.py",
    "test_full_disk.py",
    "test_interrupt.py",
    "test_distributed.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable
