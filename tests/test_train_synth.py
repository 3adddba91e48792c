"""Does pre-training learn what the loss says? Image -> lesion-metadata retrieval on held-out
patients of a generated cohort whose images follow their metadata, against a control run whose
lesion metadata were permuted across lesions before training (no image-metadata link left)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slimp_cli.models.runs import load_run, read_metrics
from slimp_cli.train import pretrain

TINY = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)
TRAIN = dict(
    patients_per_batch=8,
    lesions_per_patient=10,
    epochs=6,
    max_steps=150,
    warmup_steps=10,
    lr=1e-3,
    workers=0,
    device="cpu",
    log_every=10,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def permuted_copy(src: Path, dst: Path, seed: int = 0) -> Path:
    """A copy of ingested shards whose lesion metadata are permuted across all lesions."""
    from slimp_cli.data.shards import ShardIndex, ShardWriter

    index = ShardIndex.open(src)
    records = list(index)
    fields = [les["fields"] for rec in records for les in rec.lesions]
    perm = np.random.default_rng(seed).permutation(len(fields))
    dst.mkdir(parents=True)
    writer = ShardWriter(dst)
    k = 0
    for rec in records:
        lesions = []
        for les in rec.lesions:
            lesions.append({**les, "fields": fields[perm[k]]})
            k += 1
        writer.write(
            rec.key,
            {"patient_id": rec.patient_id, "fields": rec.fields, "derived": rec.derived},
            lesions,
            [rec.read_image(j) for j in range(len(rec.lesions))],
        )
    shards = writer.commit()
    shutil.copy(src / "schema.json", dst / "schema.json")  # same values: same statistics
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["shards"] = [
        {
            "name": s.name,
            "sha256": s.sha256,
            "bytes": s.bytes,
            "patients": s.patients,
            "images": s.images,
        }
        for s in shards
    ]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@torch.no_grad()
def image_to_lesion_ranks(run: Path, data: Path) -> np.ndarray:
    """Rank of each lesion's own metadata among all lesions' metadata, queried by its image."""
    from slimp_cli.data.schema import encode_tabular
    from slimp_cli.data.shards import ShardIndex

    _run = load_run(run)

    model, _, _ = _run.model, _run.config, _run.schema
    images, records = [], []
    for rec in ShardIndex.open(data):
        for j, les in enumerate(rec.lesions):
            images.append(model.preprocess.load(rec.read_image(j)))
            records.append(les["fields"])
    w = torch.nn.functional.normalize(model.encode_image(torch.stack(images)), dim=1)
    h = model.encode_lesion(encode_tabular(model.lesion_features, records))
    sim = w @ torch.nn.functional.normalize(h, dim=1).T
    return (1 + (sim > sim.diag()[:, None]).sum(1)).numpy()


@pytest.fixture(scope="module")
def train_cohort(tmp_path_factory) -> Path:
    """200 training patients from the generator (seed 1); the synth fixture (seed 0) is held out."""
    from slimp_cli.ingest import ingest
    from slimp_cli.ingest.synth import generate_cohort

    root = tmp_path_factory.mktemp("synth_train")
    generate_cohort(root / "cohort", patients=200, seed=1, image_size=32)
    ingest("synth", root / "cohort", root / "shards", image_size=32, workers=1)
    return root / "shards"


def test_retrieval_beats_chance_only_when_metadata_match_images(
    train_cohort, synth_shards, tmp_path
):
    real = pretrain(train_cohort, tmp_path / "real", model=TINY, train=TRAIN)
    control_data = permuted_copy(train_cohort, tmp_path / "permuted")
    control = pretrain(control_data, tmp_path / "control", model=TINY, train=TRAIN)

    ranks = image_to_lesion_ranks(real, synth_shards)
    control_ranks = image_to_lesion_ranks(control, synth_shards)
    n = len(ranks)
    chance_r1 = 1.0 / n
    r1, control_r1 = float(np.mean(ranks == 1)), float(np.mean(control_ranks == 1))
    print(
        f"held-out lesions {n}: R@1 {r1:.3f} (control {control_r1:.3f}, chance "
        f"{chance_r1:.3f}); mean rank {ranks.mean():.1f} (control {control_ranks.mean():.1f}, "
        f"chance {(n + 1) / 2:.1f})"
    )
    assert r1 >= 5 * chance_r1
    assert ranks.mean() < (n + 1) / 2 / 3
    assert control_r1 < 5 * chance_r1
    assert control_ranks.mean() > 0.6 * (n + 1) / 2
    # both runs trained: the loss fell in the real run
    loss = [m["loss"] for m in read_metrics(real)]
    assert np.mean(loss[-3:]) < 0.7 * np.mean(loss[:3])
