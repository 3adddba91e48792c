"""Training data of the local path: patient batches sampled from a `ShardIndex`.

This module decides *what* to draw; `train/batches.py` turns what was drawn into samples and
batches (the streamed path, train/streamed.py, shares it). Design for exact resume and
multi-process training:
- `PatientDataset` is map-style over a `ShardIndex` (random access by seek). An item key is a
  `PatientItem`: which patient, which of its lesions, and the augmentation seed. Loading an item
  (`batches.PatientSamples`) is a pure function of its key, wherever it runs (main process or a
  DataLoader worker).
- `PatientBatchSampler` draws an epoch's plan from `numpy.random.default_rng([seed, epoch])`:
  a patient permutation and, per patient, up to N lesions (malignant ones first with positive
  sampling). An epoch's batches are therefore a pure function of (seed, epoch); resuming at
  (epoch, step) replays the same plan from that step. With W processes, step s uses the global
  batch `perm[s*B*W:(s+1)*B*W]` and rank r takes its slice `[r*B:(r+1)*B]`.
- Augmentation of the patient at position q of the global batch of step s draws from
  `default_rng([seed, epoch, s, q])`: independent of the rank split and of worker scheduling.
- `batches.collate` builds the batch dict of docs/internals.md.
- SM3's cases (`CaseDataset`, `collate_cases`, `case_training_data`): the same sampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..core.errors import SlimpError
from ..data.shards import Case, case_index
from ..data.transforms import Preprocess, decode_image
from .batches import (
    EpochDraws,
    PatientInfo,
    PatientSamples,
    case_key,
    choose_lesions,
    collate,
    count_units,
    data_loader,
    epoch_steps,
    lesion_units,
    patient_info,
    resolve_recipe,
)


class PatientItem(NamedTuple):
    """The key of one dataset item: a patient, the lesions drawn for it, its augmentation seed."""

    patient: int  # patient index in the ShardIndex
    lesions: tuple[int, ...]  # lesion indices inside the patient (sorted)
    aug_key: tuple[int, ...]  # (seed, epoch, step, position in the global batch)


# --------------------------------------------------------------------------- sampler


class PatientBatchSampler(EpochDraws):
    """Yields, per step, this rank's list of `PatientItem`s of the current epoch.

    Two kinds of batch:
    - patient batches (SLIMP's nested and flat variants): B patients, each with up to N of its
      lesions (`choose_lesions`);
    - image batches (`images_per_batch`, the SimCLR baseline): single images drawn at random
      across patients. NOTE[DIFF]: SimCLR is a per-image method; patient-grouped
      batches would make images of one patient each other's negatives far more often than in
      a standard SimCLR run, handicapping the image-only baseline. An epoch's images are the
      ones the patient sampler would draw (every training patient's <= N lesions, re-drawn each
      epoch by `choose_lesions`), so both kinds see the same images per epoch
      (`train/budget.py`; docs/method.md).

    `use` lists the patient indices that may be drawn (the held-out patients are left out);
    None = all. The plan of an epoch is a pure function of (seed, epoch); `set_epoch(epoch,
    start_step)` selects the epoch and where to start in it (resume). Incomplete last batches
    are dropped (contrastive losses want the same batch on every step and rank).
    """

    def __init__(
        self,
        patients: Sequence[PatientInfo],
        *,
        patients_per_batch: int,
        lesions_per_patient: int,
        positive_sampling: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        use: Sequence[int] | None = None,
        images_per_batch: int | None = None,
    ) -> None:
        per_image = images_per_batch is not None
        super().__init__(
            batch=images_per_batch if per_image else patients_per_batch,
            lesions_per_patient=lesions_per_patient,
            positive_sampling=positive_sampling,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.patients = list(patients)
        self.use = list(range(len(self.patients)) if use is None else use)
        self.images_per_batch = images_per_batch
        if len(self.use) == 0:
            raise SlimpError("data has no patients to train on; ingest a dataset with images first")
        counts = [self.patients[p].n_lesions for p in self.use]
        n_units = count_units(counts, self.n_max, per_image)
        if per_image:
            self.n_images = n_units
        self.steps_per_epoch = epoch_steps(
            n_units, batch=self.batch, world_size=world_size, per_image=per_image, n_max=self.n_max
        )

    def plan(self, epoch: int) -> list[list[PatientItem]]:
        """Every step of `epoch` for this rank: lists of B items."""
        return [
            items[self.rank * self.batch : (self.rank + 1) * self.batch]
            for items in self.global_plan(epoch)
        ]

    def global_plan(self, epoch: int) -> list[list[PatientItem]]:
        """Every step of `epoch` for all ranks together: lists of B x world_size items (rank
        r's are `[r*B:(r+1)*B]`)."""
        rng = np.random.default_rng([self.seed, epoch])
        gb = self.batch * self.world_size
        if self.images_per_batch is not None:
            # the images the patient sampler would draw this epoch, shuffled across patients
            units = [
                (p, unit)
                for p in self.use
                for unit in lesion_units(
                    choose_lesions(self.patients[p], self.n_max, self.positive_sampling, rng), True
                )
            ]
            perm = rng.permutation(len(units))
        else:
            perm = rng.permutation(len(self.use))
        steps = []
        for s in range(self.steps_per_epoch):
            items = []
            for q in range(gb):  # every rank draws every item: one shared rng stream
                u = int(perm[s * gb + q])
                if self.images_per_batch is not None:
                    p, unit = units[u]
                    items.append(PatientItem(p, unit, (self.seed, epoch, s, q)))
                    continue
                p = self.use[u]
                lesions = choose_lesions(self.patients[p], self.n_max, self.positive_sampling, rng)
                items.append(PatientItem(p, lesions, (self.seed, epoch, s, q)))
            steps.append(items)
        return steps

    def images_in_epoch(self, epoch: int) -> int:
        """Images drawn in `epoch` by all ranks together (each image item is one image)."""
        if self.images_per_batch is not None:
            return self.steps_per_epoch * self.batch * self.world_size
        return sum(len(it.lesions) for items in self.global_plan(epoch) for it in items)

    def __iter__(self) -> Iterator[list[PatientItem]]:
        plan = self.plan(self.epoch)
        start, self.start_step = self.start_step, 0
        yield from plan[start:]

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step


def image_batch(train, per_image: bool) -> int | None:
    """Images per step of a per-image (SimCLR) run, None for patient batches: `--images-per-batch`,
    or B x N when a TrainConfig leaves it unset (`pretrain` sets it: train/budget.py)."""
    if not per_image:
        return None
    return train.images_per_batch or train.patients_per_batch * train.lesions_per_patient


def training_sampler(
    infos: Sequence[PatientInfo],
    train,
    *,
    per_image: bool,
    use: Sequence[int] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> PatientBatchSampler:
    """The sampler a run with TrainConfig `train` trains with (the training loop's and the
    budget's: one construction). `per_image`: the model trains on single images (SimCLR)."""
    return PatientBatchSampler(
        infos,
        patients_per_batch=train.patients_per_batch,
        lesions_per_patient=train.lesions_per_patient,
        positive_sampling=train.positive_sampling,
        seed=train.seed,
        rank=rank,
        world_size=world_size,
        use=use,
        images_per_batch=image_batch(train, per_image),
    )


# The aug_key "epoch" of validation items: outside any training epoch's stream.
VALIDATION_EPOCH = 2**31 - 1


def validation_plan(
    patients: Sequence[PatientInfo],
    use: Sequence[int],
    *,
    patients_per_batch: int,
    lesions_per_patient: int,
    seed: int,
    images_per_batch: int | None = None,
) -> list[list[PatientItem]]:
    """Fixed batches over the held-out patients (`use`) for the per-epoch validation loss.

    The same for every epoch (so the curve moves only with the model); drawn from its own rng,
    never the training stream. Every held-out patient appears once; the last batch may be
    smaller (at least 2 items: a contrastive loss needs a negative).
    """
    rng = np.random.default_rng([seed, 0x7A1])
    if images_per_batch is not None:
        units = [(p, (j,)) for p in use for j in range(patients[p].n_lesions)]
        size = images_per_batch
    else:
        units = [(p, choose_lesions(patients[p], lesions_per_patient, False, rng)) for p in use]
        size = patients_per_batch
    batches = []
    for start in range(0, len(units), size):
        chunk = units[start : start + size]
        if len(chunk) >= 2:
            batches.append(
                [
                    PatientItem(p, les, (seed, VALIDATION_EPOCH, start // size, q))
                    for q, (p, les) in enumerate(chunk)
                ]
            )
    return batches


# --------------------------------------------------------------------------- dataset


def patient_infos(index) -> list[PatientInfo]:
    """Lesion counts and malignant lesions of every patient (reads the JSON entries only)."""
    return [patient_info(index.patient(i).lesions) for i in range(len(index))]


class PatientDataset(torch.utils.data.Dataset):
    """Map-style dataset over a `ShardIndex`: `dataset[PatientItem]` -> one patient's sample,
    made by `batches.PatientSamples` (the streamed path's too; the keyword options are its
    options, `samples` holds it).

    The index's own schema must agree with the model's features (checked by the callers).
    """

    def __init__(self, index, **options) -> None:
        self.index = index
        self.samples = PatientSamples(**options)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: PatientItem) -> dict:
        if isinstance(item, (int, np.integer)):
            n = len(self.index.patient(int(item)).lesions)
            item = PatientItem(int(item), tuple(range(n)), (0, 0, 0, int(item)))
        return self.samples(self.index.patient(item.patient), item.lesions, item.aug_key)


class LocalBatches:
    """The local path's batches for the training loop: the sampler's plan of each epoch through
    one DataLoader (random access; resumes at any step). The streamed path
    (`streamed.StreamBatches`) has the same interface."""

    record = None  # no config.json block of its own

    def __init__(self, sampler: PatientBatchSampler, loader: torch.utils.data.DataLoader) -> None:
        self.sampler = sampler
        self.loader = loader

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def check_resume(self, state: dict | None) -> None:
        """Any checkpoint step resumes exactly here."""

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch, start_step)
        return self.loader


def make_loader(
    dataset: PatientDataset,
    sampler: PatientBatchSampler,
    *,
    workers: int,
    prefetch: int,
    pin_memory: bool,
    collate_fn=collate,
) -> torch.utils.data.DataLoader:
    """DataLoader over the batch sampler (the sampler itself runs in the main process; the
    workers persist across epochs)."""
    return data_loader(
        dataset,
        workers=workers,
        prefetch=prefetch,
        pin_memory=pin_memory,
        persistent=True,
        batch_sampler=sampler,
        collate_fn=collate_fn,
    )


# --------------------------------------------------------------------------- cases (SM3)
#
# SM3 trains on *cases* (`shards.case_index`: one lesion's images by modality, a dermoscopic
# and a clinical image, either may be missing), not on patients' lesion lists. The same
# PatientBatchSampler draws them (one PatientInfo per case: an epoch's plan is a pure function of (seed, epoch), resume
# starts mid-epoch, ranks slice the global batch); a `PatientItem.patient` is then a case index.


def case_infos(cases: Sequence[Case]) -> list[PatientInfo]:
    """What PatientBatchSampler needs to draw cases as it draws patients (one item each)."""
    return [PatientInfo(1, ()) for _ in cases]


class CaseDataset(torch.utils.data.Dataset):
    """Map-style dataset of cases: `dataset[PatientItem]` -> one case's views per modality.

    A sample: `<short>` [views, 3, S, S] uint8 per modality the case has (`derm`, `clinic` for
    dermoscopic, clinical; absent when missing), with `<short>_jitter` [views, 5] (the colour
    draws) when augmented, and `case` (its index). `views` = 2 gives two augmented views
    (SimCLR, stage 1), 1 one view (stage 2), augmented or not. `recipe`: `transforms.RECIPES`
    ("simclr": the standard SimCLR recipe of SM3 Sec. IV-A-1). Like the SLIMP path, only uint8
    leaves the dataset: `batches.batch_to` normalises and applies the colour maths batched.
    """

    SHORT = {"dermoscopic": "derm", "clinical": "clinic"}

    def __init__(
        self,
        index,
        cases: Sequence[Case],
        *,
        preprocess: Preprocess,
        views: int = 2,
        augment: bool = True,
        recipe: str = "light",
    ) -> None:
        self.index = index
        self.cases = list(cases)
        self.preprocess = preprocess
        self.views = views
        self.augment = augment
        self.recipe = resolve_recipe(recipe)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, item: PatientItem) -> dict:
        if isinstance(item, (int, np.integer)):
            item = PatientItem(int(item), (), (0, 0, 0, int(item)))
        case = self.cases[item.patient]
        rec = self.index.patient(case.patient)
        rng = np.random.default_rng(list(item.aug_key)) if self.augment else None
        out: dict = {"case": item.patient}
        pre = self.preprocess
        for modality, j in case.images:
            where = f"patient {rec.patient_id} lesion {case.lesion_id} ({modality})"
            img = decode_image(rec.read_image(j), where=where)
            name = self.SHORT[modality]
            if rng is None:
                out[name] = pre.eval_uint8(img).expand(self.views, -1, -1, -1)
                continue
            views = [pre.augment_view(img, rng, self.recipe) for _ in range(self.views)]
            out[name] = torch.stack([v for v, _ in views])
            out[f"{name}_jitter"] = torch.stack([j for _, j in views])
        return out


def collate_cases(samples: Sequence[dict]) -> dict:
    """Merge B case samples: `derm1`, `derm2` (or `derm` with one view) [n_d, 3, S, S] uint8
    over the cases with a dermoscopic image (+ `derm_jitter1`, `derm_jitter2` or `derm_jitter`
    [n_d, 5] when augmented), the same for `clinic`, `has_derm`, `has_clinic` [B] bool, `case`
    [B] long and `n_images` (int, for the images/s log). `batch_to` finishes the images."""
    names = ("derm", "clinic")
    first = next(s for s in samples if any(k in s for k in names))
    short = next(k for k in names if k in first)
    views = first[short].shape[0]
    batch: dict = {"case": torch.tensor([s["case"] for s in samples], dtype=torch.long)}
    batch["n_images"] = 0
    for name in names:
        has = [name in s for s in samples]
        batch[f"has_{name}"] = torch.tensor(has, dtype=torch.bool)
        batch["n_images"] += sum(has) * views
        for suffix in ("", "_jitter"):
            proto = first.get(short + suffix)  # [views, ...]: the shape and dtype of an absent one
            if proto is None:
                continue
            have = [s[name + suffix] for s in samples if name in s]
            stacked = torch.stack(have) if have else proto.new_zeros(0, *proto.shape)
            for v in range(views):
                batch[case_key(name + suffix, v, views)] = stacked[:, v]
    return batch


def case_training_data(
    index, model, train, info, use: Sequence[int] | None = None
) -> tuple[CaseDataset, PatientBatchSampler, object]:
    """(dataset, sampler, collate) of an SM3 model's training cases.

    Stage 1 (`model.stage == "multimodal"`): two augmented views per image, always augmented
    (SimCLR), by default with the standard SimCLR recipe (SM3 Sec. IV-A-1); stage 2: one view,
    augmented with `--augment` (the light recipe by default). `--augment-recipe` overrides the
    recipe. `--patients-per-batch` is the number of cases per step. `use`: the training
    patients (held-out patients' cases are never drawn); None = all.
    """
    cases = case_index(index, model.inputs.modalities)
    if use is not None:
        allowed = set(use)
        cases = [c for c in cases if c.patient in allowed]
    stage1 = getattr(model, "stage", "multimodal") == "multimodal"
    recipe = train.augment_recipe
    if recipe == "auto":
        recipe = "simclr" if stage1 else "light"
    dataset = CaseDataset(
        index,
        cases,
        preprocess=model.preprocess,
        views=2 if stage1 else 1,
        augment=stage1 or train.augment,
        recipe=recipe,
    )
    sampler = PatientBatchSampler(
        case_infos(cases),
        patients_per_batch=train.patients_per_batch,
        lesions_per_patient=1,
        positive_sampling=False,
        seed=train.seed,
        rank=info.rank,
        world_size=info.world_size,
    )
    return dataset, sampler, collate_cases
