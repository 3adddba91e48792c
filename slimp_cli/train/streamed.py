"""Training batches streamed from shard URLs (`pretrain`/`adapt --shard-url TEMPLATE`).

The local path (train/data.py) draws any patient at any step; a stream reads each shard front to
back, so this path works at epoch granularity instead:

- Steps per epoch are fixed up front from the patient index (index.json, or one JSON-only pass):
  training patients // (processes x B) (SimCLR: training images, <= N per patient, //
  (processes x images per batch)), so every rank does the same number of steps and the LR
  schedule is known.
- Epoch e's shard order is a permutation drawn from (seed, e), the same on every rank; rank r
  takes every world-th shard from r (`split_by_node`), DataLoader worker w every workers-th of
  those (`split_by_worker`). A worker whose shards run out reads them again (a new pass, its order
  reshuffled from (seed, e, pass)) until the epoch's steps are done.
- Held-out patients (holdout.json) are dropped as they stream by; each training patient's lesions
  are chosen as the local sampler chooses them (`choose_lesions`, positive sampling included, from
  an rng of (seed, epoch, pass, key)); a shuffle buffer (at most `BUFFER_IMAGES` images) mixes
  patients within a worker; B at a time become one batch, decoded, augmented and collated by
  the code of the local path (`batches.PatientSamples`, `batches.collate`), the augmentation of
  position q in the global batch of step s drawn from (seed, epoch, s, q) as there.
- DataLoader workers take batches in turn (worker w makes steps w, w + W, ...): with the same
  number of workers an epoch is a pure function of (seed, epoch), so `--resume` inside an epoch
  replays it, reading but not decoding the batches before the checkpoint's step (resuming at an
  epoch boundary has no such cost and no such condition).
- No per-epoch validation loss: the held-out patients are scattered over every shard, and
  streaming them would read the whole data again each epoch. embed + probe report on them.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from ..core.devices import default_workers
from ..core.errors import SlimpError
from ..data.shard_stream import (
    ShardSource,
    StreamedPatient,
    assigned_shards,
    epoch_shards,
    worker_position,
)
from . import batches
from .data import image_batch

# The shuffle buffer of each worker holds at most this many images (not patients: a SLICE-3D
# patient brings up to N of its ~385 images).
BUFFER_IMAGES = 4096
VALIDATION_NOTE = (
    "none: a streamed run does not read its held-out patients during training (they are "
    "scattered over every shard); embed + probe report on them"
)
STATISTICS_NOTE = (
    "all patients (schema.json): a streamed run reads no patient's fields before training"
)
# seed tags: the lesion choice, the shuffle buffer, the order of a repeated pass
_LESIONS, _BUFFER, _PASS = 0x1E5, 0xB0F, 0x9A55


def _shuffled(units: Iterable, capacity: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer over (record, lesions) units holding at most `capacity` images; drained
    (in random order) when `units` ends."""
    buf, held = [], 0
    for unit in units:
        buf.append(unit)
        held += len(unit[1])
        while held >= capacity and buf:
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            out = buf.pop()
            held -= len(out[1])
            yield out
    for i in rng.permutation(len(buf)):
        yield buf[i]


def _chunks(units: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(units, size)):
        if len(chunk) < size:
            return
        yield chunk


class PatientStream(batches.EpochDraws, torch.utils.data.IterableDataset):
    """This rank's training batches of one epoch, streamed; iterate in a DataLoader.

    Yields dicts: `batch` (what `collate` makes of the `samples` of its patients), `step` (its
    step in the epoch), `keys` and `shards` (of its patients), `worker`; or, when a shard cannot
    be read or decoded, one `{"error": message}` (a worker's exception would reach the main
    process wrapped in a traceback). `set_epoch(epoch, start_step)` before each epoch.
    """

    def __init__(
        self,
        source: ShardSource,
        samples: batches.PatientSamples,
        *,
        held_out: frozenset[str],
        per_image: bool,
        buffer_images: int = BUFFER_IMAGES,
        **draws,
    ) -> None:
        super().__init__(**draws)  # batch, lesions_per_patient, ...: `batches.EpochDraws`
        self.source = source
        self.samples = samples
        self.held_out = held_out
        self.per_image = per_image
        self.buffer_images = buffer_images

    def shards(self, role: int, workers: int) -> list[str]:
        """The shards read by worker role `role` of `workers` on this rank this epoch."""
        order = epoch_shards(self.source.names, seed=self.seed, epoch=self.epoch)
        return assigned_shards(
            order, rank=self.rank, world=self.world_size, worker=role, workers=workers
        )

    def patients(self, shards: list[str], role: int) -> Iterator[tuple[int, StreamedPatient]]:
        """(pass, record) of the training patients of `shards`, pass after pass (each pass but
        the first in a reshuffled order); ends only when a whole pass had none."""
        for cycle in itertools.count():
            order = shards
            if cycle:
                key = [self.seed, self.epoch, cycle, self.rank, role, _PASS]
                order = [shards[i] for i in np.random.default_rng(key).permutation(len(shards))]
            found = False
            for name in order:
                for record in self.source.read(name):
                    if record.patient_id not in self.held_out:
                        found = True
                        yield cycle, record
            if not found:
                return

    def _batches(self) -> Iterator[dict]:
        worker, workers = worker_position()
        # worker w makes steps role, role + W, ...; starting at step k the first worker asked
        # (w = 0) must make step k: role = (w + k) mod W
        role = (worker + self.start_step) % workers
        shards = self.shards(role, workers)
        units = self._stream(shards, role)
        for k, group in enumerate(_chunks(units, self.batch)):
            step = k * workers + role
            if step >= self.start_step:  # earlier steps (a resumed epoch): read, not decoded
                yield self._collate(group, step, worker)

    def _stream(self, shards: list[str], role: int) -> Iterator[tuple[StreamedPatient, tuple]]:
        """Every pass's units, shuffled within the pass."""
        passes = itertools.groupby(self.patients(shards, role), key=lambda cr: cr[0])
        for cycle, records in passes:
            key = [self.seed, self.epoch, cycle, self.rank, role, _BUFFER]
            units = (u for _, rec in records for u in self._units_of(rec, cycle))
            yield from _shuffled(units, self.buffer_images, np.random.default_rng(key))

    def _units_of(self, record: StreamedPatient, cycle: int) -> Iterator[tuple]:
        key = [self.seed, self.epoch, cycle, zlib.crc32(record.key.encode()), _LESIONS]
        chosen = batches.choose_lesions(
            batches.patient_info(record.lesions),
            self.n_max,
            self.positive_sampling,
            np.random.default_rng(key),
        )
        keep = {record.lesions[j]["image"] for j in chosen}
        record.images = {k: v for k, v in record.images.items() if k in keep}  # memory
        for unit in batches.lesion_units(
            chosen, self.per_image
        ):  # SimCLR: the <= N images, one each
            yield record, unit

    def _collate(self, group: list[tuple], step: int, worker: int) -> dict:
        first = self.rank * self.batch  # position in the global batch, as the local sampler
        samples = [
            self.samples(record, lesions, (self.seed, self.epoch, step, first + i))
            for i, (record, lesions) in enumerate(group)
        ]
        return {
            "step": step,
            "worker": worker,
            "keys": [record.key for record, _ in group],
            "shards": [record.shard for record, _ in group],
            "batch": batches.collate(samples),
        }

    def __iter__(self) -> Iterator[dict]:
        try:
            yield from self._batches()
        except SlimpError as exc:
            yield {"error": str(exc)}


class StreamBatches:
    """An epoch at a time of a `PatientStream`: what the training loop iterates.

    `epoch(e, start)` yields exactly `steps_per_epoch - start` batches (a fresh DataLoader per
    epoch, so its workers see the epoch); `record` is config.json's `stream` block."""

    def __init__(
        self,
        stream: PatientStream,
        *,
        steps_per_epoch: int,
        workers: int,
        prefetch: int,
        pin_memory: bool,
    ) -> None:
        self.stream = stream
        self.steps_per_epoch = steps_per_epoch
        self.workers = workers
        self.prefetch = prefetch
        self.pin_memory = pin_memory

    @property
    def record(self) -> dict:
        return {
            "shard_url": self.stream.source.template,
            "shards": len(self.stream.source.names),
            "loader_workers": self.workers,
            "buffer_images": self.stream.buffer_images,
            "steps_per_epoch": self.steps_per_epoch,
            "validation": VALIDATION_NOTE,
        }

    def check_resume(self, state: dict | None) -> None:
        """Resuming inside an epoch replays its stream, which depends on the number of workers."""
        if state is None or not int(state.get("step_in_epoch", 0)):
            return
        saved = (state.get("config") or {}).get("stream", {}).get("loader_workers")
        if saved != self.workers:
            raise SlimpError(
                f"--resume inside an epoch (step {state['step_in_epoch']} of "
                f"{self.steps_per_epoch}) replays the epoch's stream, which depends on the "
                f"number of DataLoader workers: the run used {saved}, this session "
                f"{self.workers}; give --workers {saved}"
            )

    def _loader(self) -> Iterator[dict]:
        if self.workers == 0:
            return iter(self.stream)
        loader = batches.data_loader(
            self.stream,
            workers=self.workers,
            prefetch=self.prefetch,
            pin_memory=self.pin_memory,
            batch_size=None,
        )
        return iter(loader)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        self.stream.set_epoch(epoch, start_step)
        items = self._loader()
        try:
            for _ in range(start_step, self.steps_per_epoch):
                item = next(items, None)
                if item is None:
                    raise SlimpError(
                        f"rank {self.stream.rank}'s shards gave no training patients (epoch "
                        f"{epoch + 1}); use fewer processes or smaller shards"
                    )
                if "error" in item:
                    raise SlimpError(item["error"])
                yield item["batch"]
        finally:
            del items  # a DataLoader iterator shuts its workers down when dropped


def stream_batches(
    source: ShardSource, *, model, schema, patients, train, info, pin_memory: bool
) -> StreamBatches:
    """The streamed training batches of `patients` (`session.TrainingPatients`) for `model`."""
    if getattr(model.inputs, "unit", "patient") == "case":
        raise SlimpError(SM3_STREAM_MESSAGE)
    entries = source.patient_entries()
    per_image = bool(model.inputs.two_views)  # SimCLR: single images (<= N per patient)
    batch = image_batch(train, True) if per_image else train.patients_per_batch
    n_max = train.lesions_per_patient
    units = batches.count_units([entries[i].images for i in patients.use], n_max, per_image)
    world = info.world_size
    steps = batches.epoch_steps(
        units, batch=batch, world_size=world, per_image=per_image, n_max=n_max
    )
    if len(source.names) < world:
        raise SlimpError(
            f"{len(source.names)} shards for {world} processes: each process streams shards "
            "of its own; re-ingest with smaller shards (--max-patients-per-shard)"
        )
    stream = PatientStream(
        source,
        batches.PatientSamples(**batches.sample_options(model, schema, train)),
        held_out=frozenset(patients.holdout.patient_ids),
        batch=batch,
        per_image=per_image,
        lesions_per_patient=train.lesions_per_patient,
        positive_sampling=train.positive_sampling,
        seed=train.seed,
        rank=info.rank,
        world_size=world,
    )
    workers = train.workers if train.workers is not None else default_workers()
    return StreamBatches(
        stream,
        steps_per_epoch=steps,
        workers=min(workers, len(source.names) // world),  # a worker needs a shard
        prefetch=train.prefetch,
        pin_memory=pin_memory,
    )


SM3_STREAM_MESSAGE = (
    "--shard-url streams SLIMP's patient batches; SM3 (--method sm3) trains from local shards"
)
