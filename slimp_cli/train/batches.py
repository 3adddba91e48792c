"""Batch assembly shared by the local (train/data.py) and the streamed (train/streamed.py) paths.

The two samplers decide *what* to draw: `data.PatientBatchSampler` a seeded plan over a
`ShardIndex` (random access), `streamed.PatientStream` the patients of shards read front to back.
Everything after that is here, written once, so a patient drawn with the same lesions and the
same augmentation key is the same sample on either path:

- drawing primitives both samplers use: `PatientInfo` / `patient_info` (lesion count and
  malignant lesions of a record), `choose_lesions` (up to N lesions, positive sampling),
  `lesion_units` (a patient's units: its chosen lesions, or one unit per image for SimCLR),
  `count_units` and `epoch_steps` (steps per epoch, and the errors when a batch cannot be
  filled), `EpochDraws` (the fields and `set_epoch` of both samplers);
- `PatientSamples`: a patient record + which lesions + the augmentation key -> one sample dict
  (decode, augment, encode the metadata); `sample_options` gives its options for a run;
- `collate`: samples -> the batch dict of docs/internals.md; `batch_to`: the batch on the
  device, images finished there;
- `data_loader`: the DataLoader of both paths (its own generator: see there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import SlimpError
from ..data import decode as device_decode
from ..data.schema import TabularBatch
from ..data.transforms import RECIPES, Preprocess, decode_image, to_model_input
from ..models import MetadataInputs, patient_record

# --------------------------------------------------------------------------- what to draw


@dataclass(frozen=True)
class PatientInfo:
    """What the sampler needs to know about a patient (read once, without images)."""

    n_lesions: int
    malignant: tuple[int, ...]  # indices of the patient's malignant lesions


def patient_info(lesions: Sequence[dict]) -> PatientInfo:
    """The `PatientInfo` of a record's lesion entries (a ShardIndex's or a streamed one's)."""
    return PatientInfo(
        len(lesions), tuple(j for j, les in enumerate(lesions) if les.get("malignant") == 1)
    )


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


def lesion_units(chosen: tuple[int, ...], per_image: bool) -> list[tuple[int, ...]]:
    """The batch units of one patient's chosen lesions: the patient itself (one unit), or, for a
    per-image model (SimCLR), each image on its own."""
    return [(j,) for j in chosen] if per_image else [chosen]


def count_units(lesion_counts: Sequence[int], n_max: int, per_image: bool) -> int:
    """Units an epoch draws from patients with these lesion counts: the patients, or their
    images (min(n, N) each: the same count every epoch)."""
    if per_image:
        return sum(min(n, n_max) for n in lesion_counts)
    return len(lesion_counts)


def epoch_steps(units: int, *, batch: int, world_size: int, per_image: bool, n_max: int) -> int:
    """Steps per epoch: `units` // (batch x processes); an error when not one batch fills."""
    procs = f" x {world_size} processes" if world_size > 1 else ""
    if units < batch * world_size:
        if per_image:
            raise SlimpError(
                f"data has {units} training images (at most --lesions-per-patient {n_max} per "
                f"patient) but a batch needs {batch}{procs}; lower --images-per-batch"
            )
        raise SlimpError(
            f"data has {units} training patients but --patients-per-batch is {batch}{procs}; "
            "lower it"
        )
    return units // (batch * world_size)


class EpochDraws:
    """The fields both samplers draw with, and the epoch they are in.

    `batch`: units per step on this rank (patients, or images for a per-image model);
    `lesions_per_patient`: N; rank `rank` of `world_size` processes. `set_epoch(epoch,
    start_step)` selects the epoch and where to start in it (resume).
    """

    def __init__(
        self,
        *,
        batch: int,
        lesions_per_patient: int,
        positive_sampling: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch < 1 or lesions_per_patient < 1:
            raise ValueError(f"batch {batch} and lesions_per_patient {lesions_per_patient} < 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.batch = batch
        self.n_max = lesions_per_patient
        self.positive_sampling = positive_sampling
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch
        self.start_step = start_step


# --------------------------------------------------------------------------- samples

# lesion_group = position in the global batch * GROUP_STRIDE + lesion code inside the patient;
# < 2**53 for any batch, so the ids stay exact when the losses gather them as float64.
GROUP_STRIDE = 2**20

# Appended to an item's aug_key for its image-SSL views (`ssl_views`): a stream of their own,
# so the SLIMP view is the same with and without the SSL term.
SSL_STREAM = 0x551
SSL_PAIRS = (("ssl_images1", "ssl_jitter1"), ("ssl_images2", "ssl_jitter2"))
SSL_KEYS = tuple(k for pair in SSL_PAIRS for k in pair)


def case_key(key: str, view: int, views: int) -> str:
    """An SM3 case batch's key of view `view` (0-based, `data.collate_cases`): `derm` ->
    `derm1`/`derm2` with two views, `derm` with one; `derm_jitter` -> `derm_jitter1`, ..."""
    return key if views == 1 else f"{key}{view + 1}"


# SM3's case batches: each modality's view(s) and their colour draws, finished by `batch_to`.
CASE_PAIRS = tuple(
    (case_key(m, v, n), case_key(f"{m}_jitter", v, n))
    for m in ("derm", "clinic")
    for n in (1, 2)
    for v in range(n)
)


def resolve_recipe(recipe: str, auto: str | None = None) -> str:
    """`recipe` checked against `transforms.RECIPES`; "auto" becomes `auto` where one is given."""
    if recipe == "auto" and auto is not None:
        return auto
    if recipe not in RECIPES:
        choices = ", ".join((("auto",) if auto is not None else ()) + tuple(RECIPES))
        raise SlimpError(f"unknown augmentation recipe {recipe!r}; choose {choices}")
    return recipe


class PatientSamples:
    """One patient's sample from its record, the lesions drawn for it and its augmentation key:
    `samples(record, lesions, aug_key) -> dict`, a pure function of its arguments (both paths
    call it: `data.PatientDataset` with ShardIndex records, `streamed.PatientStream` with
    streamed ones; any record with `patient_id`, `lesions`, `fields`, `derived` and
    `read_image(j)` will do).

    `aug_key` = (seed, epoch, step, q): q is the patient's position in the global batch of the
    step; the augmentation draws from `default_rng(aug_key)`, the SSL views from
    `default_rng([*aug_key, SSL_STREAM])`, and `lesion_group` ids use q.

    A sample (Shape: n = len(lesions), S = the model's image size): `images` [n, 3, S, S] uint8
    (and `images2` when the model trains on two views; `jitter`/`jitter2` [n, 5]: the colour
    maths of the augmentation, applied on the device by `batch_to`), `lesion_tab` (TabularBatch
    over n lesions), `patient_tab` (TabularBatch, one row; when the model has a patient
    encoder), `malignant` [n] and `label` [n] (long, -1 = unknown; logging only),
    `lesion_group` [n] long. With `decode="gpu"`: `encoded` (n byte tensors) instead of
    `images` (+ `boxes` [n, 4] and `jitter` when augmented), decoded by `batch_to`.

    `inputs` (`model.inputs`) routes records to the model's encoders with the model's own
    vocabularies and statistics; `preprocess` (`model.preprocess`) gives size and mean/std.
    `ssl_views` (`--image-ssl-weight` > 0): two more views of every image with the SimCLR
    recipe, `ssl_images1`, `ssl_images2` [n, 3, S, S] uint8 (+ `ssl_jitter1`, `ssl_jitter2`),
    drawn from their own stream (`SSL_STREAM`): `images` stays what it is without them.
    """

    def __init__(
        self,
        *,
        inputs: MetadataInputs,
        preprocess: Preprocess,
        classes: Sequence[str] = (),
        augment: bool = False,
        recipe: str = "auto",
        ssl_views: bool = False,
        decode: str = "cpu",
    ) -> None:
        self.inputs = inputs
        self.ssl_views = ssl_views
        # "gpu": encoded bytes (+ the light view's draws) go to `batch_to`, which decodes there
        self.decode = decode
        self.preprocess = preprocess
        self.augment = augment or inputs.two_views
        # "auto": the standard SimCLR recipe for the SimCLR baseline (a fair opponent), the
        # light lesion-preserving one for SLIMP's --augment
        self.recipe = resolve_recipe(recipe, "simclr" if inputs.two_views else "light")
        if decode == "gpu" and (
            ssl_views or inputs.two_views or (self.augment and self.recipe != "light")
        ):
            raise SlimpError(
                "--decode gpu makes eval views and the light --augment recipe only; use "
                "--decode cpu for the SimCLR recipe (--variant image, --augment-recipe simclr)"
            )
        self.classes = {c: i for i, c in enumerate(classes)}

    def __call__(self, rec, lesion_ids: Sequence[int], aug_key: Sequence[int]) -> dict:
        rng = np.random.default_rng(list(aug_key)) if self.augment else None
        pre = self.preprocess
        images, images2, jitter, jitter2 = [], [], [], []
        ssl: dict[str, list] = {k: [] for k in SSL_KEYS} if self.ssl_views else {}
        ssl_rng = np.random.default_rng([*aug_key, SSL_STREAM]) if self.ssl_views else None
        encoded, boxes = [], []
        for j in lesion_ids:
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
        lesions = [rec.lesions[j] for j in lesion_ids]
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
        q = int(aug_key[3])
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


def sample_options(model, schema, train) -> dict:
    """`PatientSamples`' options for `model` trained with TrainConfig `train` on data of
    `schema` (both paths build theirs from here; `decode` is the caller's)."""
    return dict(
        inputs=model.inputs,
        preprocess=model.preprocess,
        classes=schema.classes if schema else (),
        augment=train.augment,
        recipe=train.augment_recipe,
        ssl_views=train.image_ssl_weight > 0,
    )


# --------------------------------------------------------------------------- batches


def _cat_tab(parts: Sequence[TabularBatch]) -> TabularBatch:
    return TabularBatch(*(torch.cat(fields) for fields in zip(*parts)))


def collate(samples: Sequence[dict]) -> dict:
    """Merge B patient samples into the batch dict of docs/internals.md.

    Keys (Shape: L = the samples' lesions together): `images` [L, 3, S, S], `patient_index`
    [L] (0..B-1), `lesion_tab` (L rows), `patient_tab` (B rows, nested), `images2` (image
    variant), `malignant`, `label`, `lesion_group` [L], `max_lesions` (int: most lesions of
    one patient).
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
        for key, jit in (("images", "jitter"), ("images2", "jitter2"), *SSL_PAIRS, *CASE_PAIRS):
            if key in out:
                out[key] = to_model_input(out[key], preprocess, out.pop(jit, None))
    return out


def data_loader(
    dataset, *, workers: int, prefetch: int, pin_memory: bool, persistent: bool = False, **kw
) -> torch.utils.data.DataLoader:
    """A DataLoader of either path (`kw`: batch_sampler + collate_fn, or batch_size=None).

    Its own generator: creating an iterator must not draw from the global torch RNG (dropout's),
    or a resumed run would diverge from an uninterrupted one."""
    if workers > 0:
        kw.update(prefetch_factor=prefetch, persistent_workers=persistent)
    return torch.utils.data.DataLoader(
        dataset,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        **kw,
    )
