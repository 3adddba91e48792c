"""Training data: patient batches sampled from the shards, decoded, augmented and encoded.

Design for exact resume and multi-process training:
- `PatientDataset` is map-style over a `ShardIndex` (random access by seek). An item key is a
  `PatientItem`: which patient, which of its lesions, and the augmentation seed. Loading an item
  is a pure function of its key, wherever it runs (main process or a DataLoader worker).
- `PatientBatchSampler` draws an epoch's plan from `numpy.random.default_rng([seed, epoch])`:
  a patient permutation and, per patient, up to N lesions (malignant ones first with positive
  sampling). An epoch's batches are therefore a pure function of (seed, epoch); resuming at
  (epoch, step) replays the same plan from that step. With W processes, step s uses the global
  batch `perm[s*B*W:(s+1)*B*W]` and rank r takes its slice `[r*B:(r+1)*B]`.
- Augmentation of the patient at position q of the global batch of step s draws from
  `default_rng([seed, epoch, s, q])`: independent of the rank split and of worker scheduling.
- `collate` builds the batch dict of docs/internals.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..core.errors import SlimpError
from ..data import decode as device_decode
from ..data.schema import TabularBatch
from ..data.shards import Case, case_index
from ..data.transforms import RECIPES, Preprocess, decode_image, to_model_input
from ..models import MetadataInputs, patient_record


class PatientItem(NamedTuple):
    """The key of one dataset item: a patient, the lesions drawn for it, its augmentation seed."""

    patient: int  # patient index in the ShardIndex
    lesions: tuple[int, ...]  # lesion indices inside the patient (sorted)
    aug_key: tuple[int, ...]  # (seed, epoch, step, position in the global batch)


# --------------------------------------------------------------------------- sampler


@dataclass(frozen=True)
class PatientInfo:
    """What the sampler needs to know about a patient (read once, without images)."""

    n_lesions: int
    malignant: tuple[int, ...]  # indices of the patient's malignant lesions


def choose_lesions(
    info: PatientInfo, n_max: int, positive_sampling: bool, rng: np.random.Generator
) -> tuple[int, ...]:
    """Up to `n_max` lesion indices of one patient (paper App. D), sorted.

    All lesions when the patient has at most `n_max`; otherwise a random subset that, with
    positive sampling, contains every malignant lesion (a random `n_max` of them if there are
    more malignant lesions than `n_max`).
    """
    n = info.n_lesions
    if n <= n_max:
        return tuple(range(n))
    if positive_sampling and info.malignant:
        mal = np.asarray(info.malignant, dtype=np.int64)
        if len(mal) >= n_max:
            chosen = rng.choice(mal, size=n_max, replace=False)
        else:
            rest = np.setdiff1d(np.arange(n), mal)
            chosen = np.concatenate([mal, rng.choice(rest, size=n_max - len(mal), replace=False)])
    else:
        chosen = rng.choice(n, size=n_max, replace=False)
    return tuple(sorted(int(i) for i in chosen))


class PatientBatchSampler:
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
        self.patients = list(patients)
        self.use = list(range(len(self.patients)) if use is None else use)
        self.batch = patients_per_batch
        self.n_max = lesions_per_patient
        self.positive_sampling = positive_sampling
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.images_per_batch = images_per_batch
        procs = f" x {world_size} processes" if world_size > 1 else ""
        if len(self.use) == 0:
            raise SlimpError("data has no patients to train on; ingest a dataset with images first")
        if images_per_batch is not None:
            # the same count every epoch: min(n, N) images of each training patient
            self.n_images = sum(min(self.patients[p].n_lesions, self.n_max) for p in self.use)
            self.batch = images_per_batch
            if self.n_images < images_per_batch * world_size:
                raise SlimpError(
                    f"data has {self.n_images} training images (at most "
                    f"--lesions-per-patient {self.n_max} per patient) but a batch needs "
                    f"{images_per_batch}{procs}; lower --images-per-batch"
                )
        elif len(self.use) < patients_per_batch * world_size:
            raise SlimpError(
                f"data has {len(self.use)} training patients but --patients-per-batch is "
                f"{patients_per_batch}{procs}; lower it"
            )
        n_units = self.n_images if images_per_batch is not None else len(self.use)
        self.steps_per_epoch = n_units // (self.batch * world_size)
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch
        self.start_step = start_step

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
                (p, j)
                for p in self.use
                for j in choose_lesions(self.patients[p], self.n_max, self.positive_sampling, rng)
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
                    p, j = units[u]
                    items.append(PatientItem(p, (j,), (self.seed, epoch, s, q)))
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


# lesion_group = position in the global batch * GROUP_STRIDE + lesion code inside the patient;
# < 2**53 for any batch, so the ids stay exact when the losses gather them as float64.
GROUP_STRIDE = 2**20

# The aug_key "epoch" of validation items: outside any training epoch's stream.
VALIDATION_EPOCH = 2**31 - 1

# Appended to an item's aug_key for its image-SSL views (`ssl_views`): a stream of their own,
# so the SLIMP view is the same with and without the SSL term.
SSL_STREAM = 0x551
SSL_PAIRS = (("ssl_images1", "ssl_jitter1"), ("ssl_images2", "ssl_jitter2"))
SSL_KEYS = tuple(k for pair in SSL_PAIRS for k in pair)


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
    infos = []
    for i in range(len(index)):
        lesions = index.patient(i).lesions
        infos.append(
            PatientInfo(
                len(lesions), tuple(j for j, les in enumerate(lesions) if les.get("malignant") == 1)
            )
        )
    return infos


class PatientDataset(torch.utils.data.Dataset):
    """Map-style dataset over a `ShardIndex`: `dataset[PatientItem]` -> one patient's sample.

    A sample is a dict: `images` [n, 3, S, S] uint8 (and `images2` when the model trains on
    two views; `jitter`/`jitter2` [n, 5]: the colour maths of the augmentation, applied on
    the device by `batch_to`), `lesion_tab` (TabularBatch over n lesions), `patient_tab` (TabularBatch, one row;
    when the model has a patient encoder), `malignant` [n] and `label` [n] (long, -1 = unknown;
    logging only).

    `inputs` (`model.inputs`) routes records to the model's encoders with the model's own
    vocabularies and statistics; `preprocess` (`model.preprocess`) gives size and mean/std. The
    index's own schema must agree on the features (checked by the callers).

    `ssl_views` (`--image-ssl-weight` > 0): two more views of every image with the SimCLR
    recipe, `ssl_images1`, `ssl_images2` [n, 3, S, S] uint8 (+ `ssl_jitter1`, `ssl_jitter2`),
    drawn from their own stream (`SSL_STREAM`): `images` stays what it is without them.
    """

    def __init__(
        self,
        index,
        *,
        inputs: MetadataInputs,
        preprocess: Preprocess,
        classes: Sequence[str] = (),
        augment: bool = False,
        recipe: str = "auto",
        ssl_views: bool = False,
        decode: str = "cpu",
    ) -> None:
        self.index = index
        self.inputs = inputs
        self.ssl_views = ssl_views
        # "gpu": encoded bytes (+ the light view's draws) go to `batch_to`, which decodes there
        self.decode = decode
        self.preprocess = preprocess
        self.augment = augment or inputs.two_views
        # "auto": the standard SimCLR recipe for the SimCLR baseline (a fair opponent), the
        # light lesion-preserving one for SLIMP's --augment
        if recipe == "auto":
            recipe = "simclr" if inputs.two_views else "light"
        if recipe not in RECIPES:
            raise SlimpError(
                f"unknown augmentation recipe {recipe!r}; choose auto, {', '.join(RECIPES)}"
            )
        self.recipe = recipe
        if decode == "gpu" and (
            ssl_views or inputs.two_views or (self.augment and recipe != "light")
        ):
            raise SlimpError(
                "--decode gpu makes eval views and the light --augment recipe only; use "
                "--decode cpu for the SimCLR recipe (--variant image, --augment-recipe simclr)"
            )
        self.classes = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: PatientItem) -> dict:
        if isinstance(item, (int, np.integer)):
            n = len(self.index.patient(int(item)).lesions)
            item = PatientItem(int(item), tuple(range(n)), (0, 0, 0, int(item)))
        rec = self.index.patient(item.patient)
        rng = np.random.default_rng(list(item.aug_key)) if self.augment else None
        pre = self.preprocess
        images, images2, jitter, jitter2 = [], [], [], []
        ssl: dict[str, list] = {k: [] for k in SSL_KEYS} if self.ssl_views else {}
        ssl_rng = np.random.default_rng([*item.aug_key, SSL_STREAM]) if self.ssl_views else None
        encoded, boxes = [], []
        for j in item.lesions:
            where = f"patient {rec.patient_id} lesion {rec.lesions[j].get('lesion_id')}"
            if self.decode == "gpu":  # the bytes and the view's draws; decoded in batch_to
                data = rec.read_image(j)
                encoded.append(device_decode.encoded(data))
                if rng is not None:
                    box, params = device_decode.light_view_params(
                        data, pre.img_size, rng, where=where
                    )
                    boxes.append(box)
                    jitter.append(params)
                continue
            # decode at a reduced scale when the stored image is >= 2x the model's size
            img = decode_image(rec.read_image(j), where=where, size=pre.img_size)
            if rng is None:
                images.append(pre.eval_uint8(img))
            else:
                view, params = pre.augment_view(img, rng, self.recipe)
                images.append(view)
                jitter.append(params)
                if self.inputs.two_views:
                    view, params = pre.augment_view(img, rng, self.recipe)
                    images2.append(view)
                    jitter2.append(params)
            if self.ssl_views:
                for v in (1, 2):
                    view, params = pre.augment_view(img, ssl_rng, "simclr")
                    ssl[f"ssl_images{v}"].append(view)
                    ssl[f"ssl_jitter{v}"].append(params)
        lesions = [rec.lesions[j] for j in item.lesions]
        out = {
            **({"encoded": encoded, "boxes": torch.stack(boxes)} if boxes else {}),
            **({"encoded": encoded} if encoded and not boxes else {}),
            **({"images": torch.stack(images)} if images else {}),
            "malignant": torch.tensor(
                [int(les.get("malignant", -1)) for les in lesions], dtype=torch.long
            ),
            "label": torch.tensor(
                [self.classes.get(les.get("label"), -1) for les in lesions], dtype=torch.long
            ),
        }
        if jitter:
            out["jitter"] = torch.stack(jitter)
        if images2:
            out["images2"] = torch.stack(images2)
            out["jitter2"] = torch.stack(jitter2)
        out.update({k: torch.stack(v) for k, v in ssl.items()})
        # One id per image, equal for images of one lesion, unique across the global batch
        # (the item's position q in it): the losses keep twins out of each other's negatives.
        codes: dict = {}
        for les in rec.lesions:
            codes.setdefault(les.get("lesion_id"), len(codes))
        q = int(item.aug_key[3])
        out["lesion_group"] = torch.tensor(
            [q * GROUP_STRIDE + codes[les.get("lesion_id")] for les in lesions], dtype=torch.long
        )
        prec = patient_record(rec.fields, rec.derived)
        lesion_tab = self.inputs.lesion_tab(
            [prec] * len(lesions), [les.get("fields") or {} for les in lesions]
        )
        patient_tab = self.inputs.patient_tab([prec])
        if lesion_tab is not None:
            out["lesion_tab"] = lesion_tab
        if patient_tab is not None:
            out["patient_tab"] = patient_tab
        return out


def _cat_tab(parts: Sequence[TabularBatch]) -> TabularBatch:
    return TabularBatch(*(torch.cat(fields) for fields in zip(*parts)))


def collate(samples: Sequence[dict]) -> dict:
    """Merge B patient samples into the batch dict of docs/internals.md.

    Keys: `images` [L, 3, S, S], `patient_index` [L] (0..B-1), `lesion_tab` (L rows),
    `patient_tab` (B rows, nested), `images2` (image variant), `malignant`, `label` [L],
    `max_lesions` (int: most lesions of one patient).
    """
    counts = [len(s["malignant"]) for s in samples]
    batch = {
        "patient_index": torch.repeat_interleave(
            torch.arange(len(samples)), torch.tensor(counts, dtype=torch.long)
        ),
        "malignant": torch.cat([s["malignant"] for s in samples]),
        "label": torch.cat([s["label"] for s in samples]),
        "lesion_group": torch.cat([s["lesion_group"] for s in samples]),
        # known on the host: the model pads to it without a device sync (torch.compile-friendly)
        "max_lesions": max(counts),
    }
    for key in ("images", "images2", "jitter", "jitter2", "boxes", *SSL_KEYS):
        if key in samples[0]:
            batch[key] = torch.cat([s[key] for s in samples])
    if "encoded" in samples[0]:  # --decode gpu: one byte tensor per image
        batch["encoded"] = [e for s in samples for e in s["encoded"]]
    for key in ("lesion_tab", "patient_tab"):
        if key in samples[0]:
            batch[key] = _cat_tab([s[key] for s in samples])
    return batch


def batch_to(batch: dict, device: torch.device, preprocess: Preprocess | None = None) -> dict:
    """Move a collated batch (tensors and TabularBatches) to `device`; with `preprocess`,
    finish the images there: uint8 -> normalised float, the augmentation's colour maths
    batched (the lean data path: only uint8 crosses from the workers)."""
    out = {}
    if "encoded" in batch:  # --decode gpu: decode, crop and resize the batch on `device`
        batch = dict(batch)
        data, boxes = batch.pop("encoded"), batch.pop("boxes", None)
        size = preprocess.img_size
        batch["images"] = (
            device_decode.eval_images(data, img_size=size, device=device)
            if boxes is None
            else device_decode.light_views(data, boxes, img_size=size, device=device)
        )
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
        elif isinstance(v, TabularBatch):
            v = v.to(device)
        out[k] = v
    if preprocess is not None:
        for key, jit in (("images", "jitter"), ("images2", "jitter2"), *SSL_PAIRS):
            if key in out:
                out[key] = to_model_input(out[key], preprocess, out.pop(jit, None))
    return out


class LocalBatches:
    """The local path's batches for the training loop: the sampler's plan of each epoch through
    one DataLoader (random access; resumes at any step). The streamed path
    (`train.stream.StreamBatches`) has the same interface."""

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
    """DataLoader over the batch sampler (the sampler itself runs in the main process)."""
    kw = {}
    if workers > 0:
        kw = dict(prefetch_factor=prefetch, persistent_workers=True)
    # Its own generator: creating an iterator must not draw from the global torch RNG (dropout's),
    # or a resumed run would diverge from an uninterrupted one.
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        **kw,
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

    A sample: `<short>` [views, 3, S, S] per modality the case has (`derm`, `clinic` for
    dermoscopic, clinical; absent when missing), `case` (its index). `views` = 2 gives two
    augmented views (SimCLR, stage 1), 1 one view (stage 2), augmented or not. `recipe`:
    `transforms.RECIPES` ("simclr": the standard SimCLR recipe of SM3 Sec. IV-A-1).
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
        if recipe not in RECIPES:
            raise SlimpError(f"unknown augmentation recipe {recipe!r}; choose {', '.join(RECIPES)}")
        self.index = index
        self.cases = list(cases)
        self.preprocess = preprocess
        self.views = views
        self.augment = augment
        self.recipe = recipe

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, item: PatientItem) -> dict:
        if isinstance(item, (int, np.integer)):
            item = PatientItem(int(item), (), (0, 0, 0, int(item)))
        case = self.cases[item.patient]
        rec = self.index.patient(case.patient)
        rng = np.random.default_rng(list(item.aug_key)) if self.augment else None
        out: dict = {"case": item.patient}
        for modality, j in case.images:
            where = f"patient {rec.patient_id} lesion {case.lesion_id} ({modality})"
            img = decode_image(rec.read_image(j), where=where)
            pre = self.preprocess
            views = [
                pre.normalize(pre.eval_uint8(img))
                if rng is None
                else pre.augment(img, rng, self.recipe)
                for _ in range(self.views)
            ]
            out[self.SHORT[modality]] = torch.stack(views)
        return out


def collate_cases(samples: Sequence[dict]) -> dict:
    """Merge B case samples: `derm1`, `derm2` (or `derm` with one view) [n_d, 3, S, S] over the
    cases with a dermoscopic image, the same for `clinic`, `has_derm`, `has_clinic` [B] bool,
    `case` [B] long and `n_images` (int, for the images/s log)."""
    names = ("derm", "clinic")
    example = next(s[k] for s in samples for k in names if k in s)  # [views, 3, S, S]
    views = example.shape[0]
    batch: dict = {"case": torch.tensor([s["case"] for s in samples], dtype=torch.long)}
    n_images = 0
    for name in names:
        have = [s[name] for s in samples if name in s]
        batch[f"has_{name}"] = torch.tensor([name in s for s in samples], dtype=torch.bool)
        stacked = torch.stack(have) if have else example.new_zeros(0, *example.shape)
        n_images += stacked.shape[0] * views
        if views == 1:
            batch[name] = stacked[:, 0]
        else:
            for v in range(views):
                batch[f"{name}{v + 1}"] = stacked[:, v]
    batch["n_images"] = n_images
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
