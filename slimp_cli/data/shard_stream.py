"""Shards read as streams (`--shard-url`): webdataset opens each shard's URL, front to back.

For data that sits in object storage. The ingested folder's small files stay local
(`manifest.json`, `schema.json` and, from ingests that write it, `index.json`); the tars are
fetched through a URL template in which `{name}` becomes each shard's file name from
manifest.json (`pipe:aws s3 cp s3://bucket/pad/{name} -`, `https://host/pad/{name}`,
`/mnt/other/pad/{name}`). Nothing here seeks: a shard is one sequential read, which is why
training reads them at epoch granularity (train/streamed.py) and the local `ShardIndex` stays
the default for exact random access.

`index.json` (written by ingest) lists every patient without its images, so a run can draw
its held-out split before reading a single shard::

    {"format": "slimp-index", "version": 1,
     "patients": [{"key": str, "patient_id": str, "shard": "shard-000000.tar",
                   "images": int, "malignant": int}, ...]}     # shard order, then tar order

`images` counts the patient's lesion entries (images), `malignant` those with malignant == 1.
Without it (older ingests) `stream_patient_index` builds the same list in one pass that
parses only the `patient.json` / `lesions.json` members.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import SlimpError
from ..core.paths import read_json
from .schema import STAT_LEVELS, patient_moments
from .shards import read_ingest_files

NAME = "{name}"
INDEX = "index.json"
INDEX_FORMAT = "slimp-index"
INDEX_VERSION = 1
_JSON_MEMBERS = ("patient.json", "lesions.json")
# Seed tag of the per-epoch shard order (its own stream, never the sampler's or the holdout's).
_SHARD_ORDER = 0x5EA4D


VERIFY_MESSAGE = (
    "--verify reads local shard files; with --shard-url each streamed shard's patient and "
    "image counts are checked against manifest.json as it is read"
)


def check_template(template: str) -> str:
    """`template` if it names the shard with `{name}`; else a SlimpError (the CLI: exit 2)."""
    if not isinstance(template, str) or NAME not in template:
        raise SlimpError(
            f"--shard-url {template!r} has no {NAME}: give a template in which {NAME} becomes "
            "each shard's file name, e.g. 'pipe:aws s3 cp s3://bucket/pad/{name} -' or "
            "'https://host/pad/{name}'"
        )
    return template


@dataclass(frozen=True)
class PatientEntry:
    """One patient as index.json lists it: no fields, no images."""

    key: str  # the sample key in its shard
    patient_id: str
    shard: str  # shard file name
    images: int  # lesion entries (images)
    malignant: int  # lesion entries with malignant == 1
    # {level: {feature: [n, mean, m2]}} (schema.patient_moments); None in an index without it
    moments: dict | None = None

    @property
    def positive(self) -> bool:
        """Has a malignant lesion (what the held-out split is stratified on)."""
        return self.malignant > 0


def index_document(entries: Sequence[PatientEntry]) -> dict:
    """The index.json object of `entries`."""
    return {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "patients": [
            {
                "key": e.key,
                "patient_id": e.patient_id,
                "shard": e.shard,
                "images": e.images,
                "malignant": e.malignant,
                **({"moments": e.moments} if e.moments is not None else {}),
            }
            for e in entries
        ],
    }


def entry_of(record, shard: str, schema) -> PatientEntry:
    """The PatientEntry of a patient record (a `shards.PatientRecord` or a `StreamedPatient`)
    under its resolved schema (which features are numerical, for the moments)."""
    levels = {level: schema.data.get(level, []) for level in STAT_LEVELS}
    return PatientEntry(
        key=record.key,
        patient_id=str(record.patient_id),
        shard=shard,
        images=len(record.lesions),
        malignant=sum(1 for les in record.lesions if les.get("malignant") == 1),
        moments=patient_moments(
            levels,
            record.fields,
            record.derived,
            [les.get("fields") or {} for les in record.lesions],
        ),
    )


def entries_from_index(index) -> list[PatientEntry]:
    """The PatientEntries of a local `ShardIndex` (JSON members only), in its order."""
    return [
        entry_of(index.patient(i), index.patient(i).shard.name, index.schema)
        for i in range(len(index))
    ]


def read_patient_index(data_dir: str | Path) -> list[PatientEntry] | None:
    """The patients listed by `data_dir/index.json`, or None when the folder has none.

    Checked against the folder's manifest.json (shard names, patients and images per shard):
    an index of other data is a SlimpError, never a silently wrong split."""
    data_dir = Path(data_dir)
    path = data_dir / INDEX
    if not path.is_file():
        return None
    doc = read_json(path)
    if (
        not isinstance(doc, dict)
        or doc.get("format") != INDEX_FORMAT
        or doc.get("version") != INDEX_VERSION
        or not isinstance(doc.get("patients"), list)
    ):
        raise SlimpError(f"{path}: not a slimp patient index ({INDEX_FORMAT}, version 1)")
    entries = []
    for i, p in enumerate(doc["patients"]):
        try:
            entries.append(
                PatientEntry(
                    key=str(p["key"]),
                    patient_id=str(p["patient_id"]),
                    shard=str(p["shard"]),
                    images=int(p["images"]),
                    malignant=int(p["malignant"]),
                    moments=p.get("moments") if isinstance(p.get("moments"), dict) else None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SlimpError(f"{path}: patient {i} is not an index entry ({exc!r})") from None
    manifest, _ = read_ingest_files(data_dir)
    check_entries(entries, listed_shards(manifest, data_dir), where=str(path))
    return entries


def listed_shards(manifest: dict, data_dir: Path) -> list[dict]:
    """manifest.json's shard list (name, patients, images per shard), in shard order."""
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise SlimpError(f"{data_dir / 'manifest.json'}: lists no shards; re-run slimp ingest")
    for s in shards:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise SlimpError(f"{data_dir / 'manifest.json'}: shard entry {s!r} has no name")
    return shards


def check_entries(entries: Sequence[PatientEntry], shards: Sequence[dict], *, where: str) -> None:
    """Entries agree with the manifest: the same shards, in order, with its counts."""
    names = [s["name"] for s in shards]
    seen = list(dict.fromkeys(e.shard for e in entries))
    if [n for n in names if n in seen] != seen or set(seen) - set(names):
        raise SlimpError(f"{where}: its shards are not manifest.json's, in its order")
    for s in shards:
        mine = [e for e in entries if e.shard == s["name"]]
        got = {"patients": len(mine), "images": sum(e.images for e in mine)}
        for what, have in got.items():
            if s.get(what) is not None and s[what] != have:
                raise SlimpError(
                    f"{where}: shard {s['name']} has {have} {what} where manifest.json lists "
                    f"{s[what]}; re-run slimp ingest"
                )


@dataclass(kw_only=True)
class StreamedPatient:
    """One patient sample as streamed: the fields of a `shards.PatientRecord`, images in memory."""

    patient_id: str
    key: str
    fields: dict
    derived: dict
    lesions: list[dict]
    shard: str  # shard file name
    images: dict[str, bytes] = field(default_factory=dict, repr=False)

    def read_image(self, j: int) -> bytes:
        """Encoded JPEG bytes of lesion j."""
        try:
            return self.images[self.lesions[j]["image"]]
        except KeyError:
            raise SlimpError(
                f"shard {self.shard}: sample '{self.key}' has no image for lesion {j}"
            ) from None

    @property
    def n_lesions(self) -> int:
        return len(self.lesions)


def _one_line(exc: BaseException) -> str:
    """What went wrong, in one line: webdataset appends the stream and the URL to an
    exception's args (the URL is named by the caller) and a pipe's failure reads
    "((cmd,), {...}): exit N (read)"."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc.args[0] if exc.args else exc).split(" @ <")[0]  # " @ <stream>" appended
    text = " ".join(text.split()) or type(exc).__name__
    status = re.search(r"exit (-?\d+) \(read\)", text)
    if status:
        return f"the command exited with status {status.group(1)}"
    if text == "empty file":
        return "it gave no data (empty file)"
    return text if len(text) <= 300 else text[:297] + "..."


def _json_member(fname: str) -> bool:
    return fname.split(".", 1)[-1].lower() in _JSON_MEMBERS


def _record(sample: dict, shard: str, json_only: bool) -> StreamedPatient:
    key = sample["__key__"]
    try:
        patient = json.loads(sample["patient.json"])
        lesions = json.loads(sample["lesions.json"])
    except KeyError as exc:
        raise SlimpError(f"shard {shard}: sample '{key}' lacks {exc.args[0]}") from None
    except ValueError as exc:
        raise SlimpError(f"shard {shard}: sample '{key}' has unreadable JSON ({exc})") from None
    images = (
        {}
        if json_only
        else {k: v for k, v in sample.items() if not k.startswith("__") and k not in _JSON_MEMBERS}
    )
    return StreamedPatient(
        patient_id=str(patient.get("patient_id", key)),
        key=key,
        fields=patient.get("fields", {}),
        derived=patient.get("derived", {}),
        lesions=lesions,
        shard=shard,
        images=images,
    )


class ShardSource:
    """An ingested folder whose shards are read through a URL template.

    `data_dir` holds manifest.json and schema.json (index.json when ingest wrote one); the
    tars may be absent there. Duck-types what training and embed read of a `ShardIndex`:
    `data_dir`, `schema`, `manifest`, `len()` (patients, from the manifest)."""

    def __init__(self, data_dir: Path, template: str, manifest: dict, schema) -> None:
        self.data_dir = data_dir
        self.template = check_template(template)
        self.manifest = manifest
        self.schema = schema
        self.shards = listed_shards(manifest, data_dir)
        self._listed = {s["name"]: s for s in self.shards}
        self._entries: list[PatientEntry] | None = None

    @classmethod
    def open(cls, data_dir: str | Path, template: str) -> ShardSource:
        check_template(template)
        data_dir = Path(data_dir)
        manifest, schema = read_ingest_files(data_dir)
        return cls(data_dir, template, manifest, schema)

    @property
    def names(self) -> list[str]:
        """Shard file names in manifest order."""
        return [s["name"] for s in self.shards]

    def url(self, name: str) -> str:
        return self.template.replace(NAME, name)

    def __len__(self) -> int:
        return sum(int(s.get("patients", 0)) for s in self.shards)

    @property
    def images(self) -> int:
        """Images (lesion entries) in all shards, from the manifest."""
        return sum(int(s.get("images", 0)) for s in self.shards)

    def read(self, name: str, *, json_only: bool = False) -> Iterator[StreamedPatient]:
        """Every patient of shard `name`, streamed from its URL by webdataset, in tar order.

        `json_only` reads only the patient.json / lesions.json members (images are skipped,
        though a stream still carries their bytes). At the end of the shard its patient and
        image counts are checked against manifest.json. Any failure (a URL that cannot be
        opened, a command that exits non-zero, a cut stream) is one SlimpError naming the shard.
        """
        import webdataset as wds

        url = self.url(name)
        where = f"shard {name} ({url})"
        pipeline = wds.DataPipeline(
            wds.SimpleShardList([url]),
            wds.tarfile_to_samples(
                handler=wds.reraise_exception, select_files=_json_member if json_only else None
            ),
        )
        patients = images = 0
        try:
            for sample in pipeline:
                record = _record(sample, name, json_only)
                patients += 1
                images += len(record.lesions)
                yield record
        except SlimpError:
            raise
        except Exception as exc:  # webdataset, tarfile, the pipe: whatever the URL raised
            raise SlimpError(f"{where}: cannot stream it: {_one_line(exc)}") from None
        listed = self._listed.get(name, {})
        for what, have in (("patients", patients), ("images", images)):
            if listed.get(what) is not None and listed[what] != have:
                raise SlimpError(
                    f"{where}: streamed {have} {what} where manifest.json lists "
                    f"{listed[what]} (a cut stream or other data)"
                )

    def patient_entries(self, note: Callable[[str], None] | None = None) -> list[PatientEntry]:
        """index.json's patients, or (no index.json) one JSON-only streaming pass; `note` is
        told when the pass is needed. Read once, then kept."""
        if self._entries is not None:
            return self._entries
        entries = read_patient_index(self.data_dir)
        if entries is None:
            if note is not None:
                note(
                    f"{self.data_dir} has no {INDEX} (an older ingest): streaming every shard "
                    "once to list its patients (re-run slimp ingest to skip this)"
                )
            entries = stream_patient_index(self)
        self._entries = entries
        return entries


def stream_patient_index(source: ShardSource) -> list[PatientEntry]:
    """What index.json lists, built by one streaming pass (JSON members only, shard order)."""
    return [
        entry_of(rec, name, source.schema)
        for name in source.names
        for rec in source.read(name, json_only=True)
    ]


def epoch_shards(names: Sequence[str], *, seed: int, epoch: int) -> list[str]:
    """The shard order of one epoch: a permutation drawn from (seed, epoch), the same on
    every rank and worker (so their splits of it are disjoint)."""
    order = np.random.default_rng([int(seed), int(epoch), _SHARD_ORDER]).permutation(len(names))
    return [names[i] for i in order]


def assigned_shards(
    order: Sequence[str], *, rank: int, world: int, worker: int, workers: int
) -> list[str]:
    """This rank's and worker's shards of `order`: webdataset's `split_by_node` (every
    world-th shard from the rank) then `split_by_worker` (every workers-th of those from the
    worker), with rank and worker given explicitly rather than read from the environment."""
    mine = itertools.islice(order, rank, None, max(1, world))
    return list(itertools.islice(mine, worker, None, max(1, workers)))


def worker_position() -> tuple[int, int]:
    """(worker id, number of workers) of the DataLoader worker running this; (0, 1) outside."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
