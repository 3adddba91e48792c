"""`slimp embed RUN DATA --shard-url TEMPLATE`: the store of `embed`, its shards streamed.

Rows come in the local path's order (shards in manifest order, patients in tar order, lesions in
lesions.json order) whatever the number of workers: worker w of W streams shards w, w + W, ...,
and each chunk of lesions (never across two shards) is written at its own rows, known in advance
from manifest.json's images per shard (`FeatureStoreWriter.append(at=...)`). Memory stays bounded
by the batch, as in the local path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..core.errors import SlimpError
from ..core.paths import sha256_file
from ..data.shard_stream import ShardSource, StreamedPatient, assigned_shards, worker_position
from ..data.transforms import Preprocess
from ..models import patient_record
from .plan import finish_store, lesion_rows, store_plan, training_sides
from .store import FeatureStoreWriter


class LesionStream(torch.utils.data.IterableDataset):
    """Chunks of at most `batch_size` lesions of one shard, decoded (uint8): dicts with `row`
    (the chunk's first row in the store), `images`, `patient_ids`, `patients` (fields +
    derived), `lesions` (lesions.json entries); one `{"error": message}` when a shard cannot be
    read or an image decoded."""

    def __init__(self, source: ShardSource, preprocess: Preprocess, batch_size: int) -> None:
        self.source = source
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.first_row: dict[str, int] = {}
        row = 0
        for shard in source.shards:
            self.first_row[shard["name"]] = row
            row += int(shard.get("images", 0))

    def __iter__(self) -> Iterator[dict]:
        try:
            yield from self._chunks()
        except SlimpError as exc:
            yield {"error": str(exc)}

    def _chunks(self) -> Iterator[dict]:
        worker, workers = worker_position()
        names = assigned_shards(self.source.names, rank=0, world=1, worker=worker, workers=workers)
        for name in names:
            row, pending = self.first_row[name], []
            for record in self.source.read(name):
                for j in range(len(record.lesions)):
                    pending.append((record, j))
                    if len(pending) == self.batch_size:
                        yield self._chunk(pending, row)
                        row, pending = row + len(pending), []
            if pending:
                yield self._chunk(pending, row)

    def _chunk(self, pending: list[tuple[StreamedPatient, int]], row: int) -> dict:
        images = []
        for record, j in pending:
            lesion = record.lesions[j].get("lesion_id")
            where = f"shard {record.shard} patient {record.patient_id} lesion {lesion}"
            images.append(self.preprocess.load_uint8(record.read_image(j), where=where))
        return {
            "row": row,
            "images": torch.stack(images),
            "patient_ids": [record.patient_id for record, _ in pending],
            "patients": [patient_record(record.fields, record.derived) for record, _ in pending],
            "lesions": [record.lesions[j] for record, j in pending],
        }


def embed_streamed(
    run,
    source: ShardSource,
    out: Path,
    *,
    image_only: bool,
    batch_size: int,
    device: torch.device,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """`embed` of `run` on the streamed shards of `source` into the store `out`."""
    model = run.model
    if getattr(model.inputs, "unit", "patient") == "case":
        raise SlimpError(
            "--shard-url: SM3 stores (one row per case) are embedded from local shards"
        )
    plan = store_plan(run, source.schema, source.data_dir, image_only)
    n = source.images
    if n == 0:
        raise SlimpError(f"{source.data_dir}: no lesions to embed")
    manifest_sha = sha256_file(source.data_dir / "manifest.json")
    seen = training_sides(run, manifest_sha, [])[0] is not None  # the run's training data
    config = plan.store_config(manifest_sha, [] if seen else None, shard_url=source.template)
    stream = LesionStream(source, run.preprocess, batch_size)
    workers = min(workers, len(source.names))  # a worker needs a shard
    chunks = (
        iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers))
        if workers
        else iter(stream)
    )
    patient_ids: list[str | None] = [None] * n
    done = 0
    writer = FeatureStoreWriter(out, n=n, overwrite=overwrite, **plan.writer(config))
    with writer, torch.no_grad():
        for chunk in chunks:
            if "error" in chunk:
                raise SlimpError(chunk["error"])
            rows = lesion_rows(
                model,
                plan,
                images=chunk["images"],
                patient_ids=chunk["patient_ids"],
                patients=chunk["patients"],
                lesions=chunk["lesions"],
                device=device,
            )
            writer.append(**rows, at=chunk["row"])
            start, b = chunk["row"], len(chunk["patient_ids"])
            patient_ids[start : start + b] = chunk["patient_ids"]
            done += b
            if progress is not None:
                progress(done, n)
        sides, holdout = training_sides(run, manifest_sha, patient_ids) if seen else (None, None)
        finish_store(writer, model, plan, sides, holdout)
    return out
