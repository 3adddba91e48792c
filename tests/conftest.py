"""Shared fixtures: ingested real data (skipped when ../shared/data is absent) and a generated cohort.

Session-scoped so the whole test suite ingests each dataset once. Images are small (64 px for
real data, 32 px for the generated cohort) to keep the suite fast on 2 CPU cores.

    pad_shards     -> Path of an ingested PAD-UFES-20 subset (418 patients, 531 images)
    derm7pt_shards -> Path of an ingested Derm7pt subset (657 patients, no patient features)
    synth_dir      -> Path of a generated cohort in the csv layout (60 patients, 32 px)
    synth_shards   -> Path of that cohort ingested
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slimp_cli.paths import shared_data_dir

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
    from slimp_cli.datasets.synth import generate_cohort

    out = tmp_path_factory.mktemp("synth_cohort")
    generate_cohort(out, patients=SYNTH_PATIENTS, seed=0, image_size=SYNTH_IMAGE_SIZE)
    return out


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory, synth_dir) -> Path:
    from slimp_cli.ingest import ingest

    out = tmp_path_factory.mktemp("synth_shards")
    ingest("synth", synth_dir, out, image_size=SYNTH_IMAGE_SIZE, workers=1)
    return out
