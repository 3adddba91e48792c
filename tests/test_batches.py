"""One batch assembly for both data paths (slimp_cli.train.batches): a patient drawn with the
same lesions and augmentation key is the same sample, read from a ShardIndex or streamed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.holdout import choose_holdout
from slimp_cli.data.schema import TabularBatch
from slimp_cli.data.shard_stream import ShardSource
from slimp_cli.data.shards import ShardIndex
from slimp_cli.models import build_model
from slimp_cli.models.config import ModelConfig
from slimp_cli.train import TrainConfig
from slimp_cli.train.batches import epoch_steps, lesion_units, sample_options
from slimp_cli.train.data import PatientDataset, PatientItem, collate
from slimp_cli.train.distributed import DistInfo
from slimp_cli.train.session import TrainingPatients
from slimp_cli.train.streamed import stream_batches

B = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory, pad_source) -> Path:
    """The PAD subset at 32 px in shards of 50 patients (several shards to stream)."""
    from slimp_cli.ingest import ingest

    out = tmp_path_factory.mktemp("pad_batches")
    ingest("pad-ufes-20", pad_source, out, image_size=32, workers=2, max_patients_per_shard=50)
    return out


def assert_same_batch(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            assert value.dtype == other.dtype and torch.equal(value, other), key
        elif isinstance(value, TabularBatch):
            for x, y in zip(value, other, strict=True):
                assert torch.equal(x, y), key
        else:
            assert value == other, key


def test_a_streamed_batch_is_the_local_batch_of_the_same_patients(shards, one_torch_thread):
    """The stream's batch (rank 1 of 2, so the global-batch positions are offset) equals the
    local dataset's samples of its patients, collated: same images (augmented, + the SSL
    views), same jitter draws, metadata encoding, labels and lesion groups, bit for bit."""
    index = ShardIndex.open(shards)
    model = build_model(ModelConfig(variant="nested", **TINY_MODEL), index.schema)
    source = ShardSource.open(shards, f"{shards}/{{name}}")
    ids = [e.patient_id for e in source.patient_entries()]
    patients = TrainingPatients(
        holdout=choose_holdout(ids, [False] * len(ids), fraction=0.0, seed=0),
        use=list(range(len(ids))),
        validation=[],
        schema=source.schema,
    )
    # N = 100 > any PAD patient's lesion count: every lesion is drawn, so the stream's
    # patients name the local items fully
    train = TrainConfig(
        patients_per_batch=B,
        lesions_per_patient=100,
        augment=True,
        image_ssl_weight=0.5,
        seed=5,
        workers=0,
        device="cpu",
    )
    streamed = stream_batches(
        source,
        model=model,
        schema=index.schema,
        patients=patients,
        train=train,
        info=DistInfo(rank=1, world_size=2),
        pin_memory=False,
    )
    stream = streamed.stream
    stream.set_epoch(1, start_step=0)
    items = iter(stream)
    dataset = PatientDataset(index, **sample_options(model, index.schema, train))
    position = {(index.patient(i).shard.name, index.patient(i).key): i for i in range(len(index))}
    for _ in range(2):
        item = next(items)
        assert "error" not in item, item
        local = []
        for q, where in enumerate(zip(item["shards"], item["keys"], strict=True)):
            p = position[where]
            n = len(index.patient(p).lesions)
            local.append(PatientItem(p, tuple(range(n)), (5, 1, item["step"], B + q)))
        assert "ssl_images1" in item["batch"] and "jitter" in item["batch"]
        assert_same_batch(item["batch"], collate([dataset[it] for it in local]))


def test_the_image_count_and_its_error_are_one_rule():
    assert lesion_units((1, 4, 6), per_image=True) == [(1,), (4,), (6,)]
    assert lesion_units((1, 4, 6), per_image=False) == [(1, 4, 6)]
    # 10 units, 3 a step on 2 processes: one step (the rest is dropped)
    assert epoch_steps(10, batch=3, world_size=2, per_image=False, n_max=4) == 1
    with pytest.raises(SlimpError, match=r"data has 5 training images .* needs 3 x 2 processes"):
        epoch_steps(5, batch=3, world_size=2, per_image=True, n_max=4)
    with pytest.raises(SlimpError, match="data has 2 training patients but --patients-per-batch"):
        epoch_steps(2, batch=3, world_size=1, per_image=False, n_max=4)
