"""`encode` of a lesion's original photograph against its row of a store (docs/cli.md states
the tolerance): embed reads the copy ingest stored (resized, JPEG re-encoded), encode resizes
the original straight to the input size, so the image vectors differ a little, never more."""

from __future__ import annotations

import numpy as np

from slimp_cli.data.shards import ShardIndex
from slimp_cli.features.encode import encode_lesion
from slimp_cli.features.store import FeatureStore


def test_encode_of_the_original_image_is_within_the_documented_tolerance(
    pad_run, pad_store, pad_shards, pad_source
):
    index = ShardIndex.open(pad_shards)
    with FeatureStore.open(pad_store) as store:
        image = store.block("image")
    row, cosines, diffs = 0, [], []
    for p in range(len(index)):
        rec = index.patient(p)
        for les in rec.lesions:
            if p < 30:  # ~40 lesions: the measurement of docs/cli.md, at test size
                stem = les["image_id"].rsplit(".", 1)[0]
                (original,) = (pad_source / "images").glob(stem + ".*")
                vec = np.asarray(encode_lesion(pad_run, original)["image"])
                ref = image[row]
                cosines.append(vec @ ref / np.linalg.norm(vec) / np.linalg.norm(ref))
                diffs.append(np.abs(vec - ref).max())
            row += 1
    assert len(cosines) >= 30
    assert min(cosines) >= 0.9998, min(cosines)
    assert max(diffs) < 0.05, max(diffs)
