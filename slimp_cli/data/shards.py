"""Patient-grouped WebDataset shards: writing (ingest) and random-access reading (training).

Layout (DESIGN.md, docs/internals.md): `OUT/shard-%06d.tar`, one sample per patient with
members `<key>.patient.json`, `<key>.lesions.json`, `<key>.0000.jpg`, ... Plain
`webdataset.WebDataset(urls)` reads them. Tars are written with `tarfile` and fixed metadata
(mtime 0, uid/gid 0, no user names, mode 0644) so identical input gives identical bytes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import SlimpError
from ..core.paths import publish, read_json, sha256_file, temp_file

SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_GLOB = "shard-*.tar"
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")
_JSON_MEMBERS = ("patient.json", "lesions.json")


def sanitise_key(patient_id: str) -> str:
    """A WebDataset key for a patient id: only [A-Za-z0-9_-] (dots would split the key)."""
    key = _KEY_BAD.sub("_", str(patient_id)) or "_"
    return key


def unique_keys(patient_ids: list[str]) -> dict[str, str]:
    """Map each patient id to a unique sanitised key; collisions get a short hash suffix."""
    keys = {pid: sanitise_key(pid) for pid in patient_ids}
    counts: dict[str, int] = {}
    for key in keys.values():
        counts[key] = counts.get(key, 0) + 1
    for pid, key in keys.items():
        if counts[key] > 1 or key != pid and key in patient_ids:
            keys[pid] = f"{key}-{hashlib.sha1(pid.encode()).hexdigest()[:8]}"
    return keys


def image_entry_name(j: int, n: int) -> str:
    """Member suffix of lesion j of n: '0000.jpg' (wider only past 9999 images)."""
    return f"{j:0{max(4, len(str(n - 1)))}d}.jpg"


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def sample_members(
    key: str, patient: dict, lesions: list[dict], images: list[bytes]
) -> list[tuple[str, bytes]]:
    """The (member name, bytes) of one patient sample, in their fixed order."""
    members = [
        (f"{key}.patient.json", _json_bytes(patient)),
        (f"{key}.lesions.json", _json_bytes(lesions)),
    ]
    members += [(f"{key}.{lesion['image']}", data) for lesion, data in zip(lesions, images)]
    return members


def _tar_size(members: list[tuple[str, bytes]]) -> int:
    """Bytes the members take in a tar (512-byte header + data padded to 512)."""
    return sum(512 + (len(data) + 511) // 512 * 512 for _, data in members)


@dataclass(kw_only=True)
class ShardInfo:
    """One finished shard as recorded in manifest.json."""

    name: str
    sha256: str
    bytes: int
    patients: int
    images: int


class ShardWriter:
    """Writes samples into size-capped shards under temporary names.

    Nothing is visible under the final names until `commit()`; `abort()` removes everything
    written so far (used for --strict failures and interrupts).
    """

    def __init__(
        self, out_dir: Path, *, max_bytes: int = 10**9, max_patients: int | None = None
    ) -> None:
        self.out_dir = Path(out_dir)
        self.max_bytes = max_bytes
        self.max_patients = max_patients
        self.done: list[tuple[Path, ShardInfo]] = []
        self.published: list[Path] = []  # renamed into place by commit()
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._bytes = self._patients = self._images = 0

    def _open(self) -> None:
        # an unpredictable name, created O_EXCL (paths.temp_file): a planted symlink is no risk
        fd, self._tmp = temp_file(self.out_dir / SHARD_PATTERN.format(len(self.done)))
        os.close(fd)
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.GNU_FORMAT)
        self._bytes = self._patients = self._images = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        name = SHARD_PATTERN.format(len(self.done))
        digest = sha256_file(self._tmp)  # streamed: a shard is up to --max-shard-size bytes
        info = ShardInfo(
            name=name,
            sha256=digest,
            bytes=self._tmp.stat().st_size,
            patients=self._patients,
            images=self._images,
        )
        self.done.append((self._tmp, info))
        self._tar = None

    def write(self, key: str, patient: dict, lesions: list[dict], images: list[bytes]) -> str:
        """Append one patient sample; starts a new shard when this one would overflow.

        Returns the (final) name of the shard that holds it."""
        members = sample_members(key, patient, lesions, images)
        size = _tar_size(members)
        full = self._patients > 0 and (
            self._bytes + size > self.max_bytes
            or (self.max_patients is not None and self._patients >= self.max_patients)
        )
        if full:
            self._close()
        if self._tar is None:
            self._open()
        for name, data in members:
            self._tar.addfile(_member(name, len(data)), io.BytesIO(data))
        # TarFile keeps a TarInfo per member it wrote (~2 per image, ~1 kB each): nothing reads
        # them back in write mode, and a 1 GB shard of small JPEGs holds ~200,000 of them.
        self._tar.members.clear()
        self._bytes += size
        self._patients += 1
        self._images += len(images)
        return SHARD_PATTERN.format(len(self.done))

    def commit(self, *, overwrite: bool = True) -> list[ShardInfo]:
        """Close the last shard and rename all of them to their final names (without
        `overwrite`, FileExistsError when a name appeared meanwhile: nothing replaced)."""
        self._close()
        for tmp, info in self.done:
            publish(tmp, self.out_dir / info.name, overwrite=overwrite)
            self.published.append(self.out_dir / info.name)
        return [info for _, info in self.done]

    def abort(self) -> None:
        """Remove every file this writer created (temporary, or renamed by `commit`)."""
        if self._tar is not None:
            with contextlib.suppress(OSError):  # a full disk: the archive's end is not written
                self._tar.close()
            self._tar = None
        paths = [tmp for tmp, _ in self.done] + ([self._tmp] if self._tmp else [])
        for path in paths + self.published:
            path.unlink(missing_ok=True)
        self.done, self.published = [], []


# ---------------------------------------------------------------------------- reading


@dataclass(kw_only=True)
class PatientRecord:
    """One patient sample, with lazy access to its images.

    `lesions` are the dicts of lesions.json (lesion_id, image_id, image, label, malignant,
    fields); `read_image(j)` returns the JPEG bytes of lesion j.
    """

    patient_id: str
    key: str
    fields: dict
    derived: dict
    lesions: list[dict]
    shard: Path
    _images: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    def read_image(self, j: int) -> bytes:
        """Encoded JPEG bytes of lesion j (one seek + read in the shard)."""
        offset, size = self._images[self.lesions[j]["image"]]
        with open(self.shard, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    @property
    def n_lesions(self) -> int:
        return len(self.lesions)


@dataclass(kw_only=True)
class _Entry:
    shard: Path
    key: str
    members: dict[str, tuple[int, int]]  # member suffix -> (data offset, size)


def _read_member(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


class ShardIndex:
    """Map-style, deterministic random access to the patients of an ingested folder.

    Built from the tar headers only (no image decoding). Fork-safe: every read opens the file.
    """

    # Parsed patient records are kept up to this many bytes of their JSON members (most
    # recently used first; the newest is always kept). Readers that walk lesion by lesion
    # (embed) ask for one patient hundreds of times in a row (SLICE-3D: ~385 lesions per
    # patient, a lesions.json of hundreds of kB), and training draws patients at random: on a
    # dataset of a few thousand patients (PAD-UFES-20: ~1 kB each) all of them stay parsed.
    CACHE_BYTES = 32 * 2**20

    def __init__(self, *, data_dir: Path, schema, manifest: dict, entries: list[_Entry]) -> None:
        self.data_dir = data_dir
        self.schema = schema
        self.manifest = manifest
        self._entries = entries
        self._cache: OrderedDict[int, tuple[PatientRecord, int]] = OrderedDict()
        self._cache_bytes = 0

    @classmethod
    def open(cls, data_dir: str | Path, *, verify: bool = False) -> ShardIndex:
        """Index `data_dir` (shards + schema.json + complete manifest.json).

        Every shard's patient and image counts and size are checked against manifest.json
        (free: the index reads every header anyway); `verify` also checks its sha256 (reads
        every byte). A mismatch is a SlimpError naming the shard."""
        data_dir = Path(data_dir)
        manifest, schema = read_ingest_files(data_dir)
        names = [s["name"] for s in manifest.get("shards", [])] or sorted(
            p.name for p in data_dir.glob(SHARD_GLOB)
        )
        if not names:
            raise SlimpError(f"{data_dir}: no shards (shard-*.tar)")
        listed = {s.get("name"): s for s in manifest.get("shards", []) if isinstance(s, dict)}
        entries: list[_Entry] = []
        for name in names:
            path = data_dir / name
            if not path.is_file():
                raise SlimpError(f"{path}: shard listed in manifest.json is missing")
            found = _index_tar(path)
            if name in listed:
                check_shard(path, found, listed[name], sha256=verify)
            entries.extend(found)
        return cls(data_dir=data_dir, schema=schema, manifest=manifest, entries=entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def keys(self) -> list[str]:
        """Sample keys (sanitised patient ids) in index order; original ids are in the records."""
        return [e.key for e in self._entries]

    def patient(self, i: int) -> PatientRecord:
        """Patient i (0 <= i < len): its metadata and lesion list; images read lazily.

        Records are cached (CACHE_BYTES): treat a returned record as read-only."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i][0]
        record = self._load(i)
        members = self._entries[i].members
        size = sum(members[m][1] for m in _JSON_MEMBERS if m in members)
        self._cache[i] = (record, size)
        self._cache_bytes += size
        while self._cache_bytes > self.CACHE_BYTES and len(self._cache) > 1:
            self._cache_bytes -= self._cache.popitem(last=False)[1][1]
        return record

    def _load(self, i: int) -> PatientRecord:
        entry = self._entries[i]
        try:
            patient = json.loads(_read_member(entry.shard, *entry.members["patient.json"]))
            lesions = json.loads(_read_member(entry.shard, *entry.members["lesions.json"]))
        except KeyError as exc:
            raise SlimpError(f"{entry.shard}: sample '{entry.key}' lacks {exc.args[0]}") from None
        return PatientRecord(
            patient_id=patient.get("patient_id", entry.key),
            key=entry.key,
            fields=patient.get("fields", {}),
            derived=patient.get("derived", {}),
            lesions=lesions,
            shard=entry.shard,
            _images={k: v for k, v in entry.members.items() if k not in _JSON_MEMBERS},
        )

    def __iter__(self) -> Iterator[PatientRecord]:
        for i in range(len(self)):
            yield self.patient(i)


def read_ingest_files(data_dir: Path):
    """(manifest dict, ResolvedSchema) of an ingested folder: its small files, which every
    reader needs, local or streaming. SlimpError for a missing folder or file, or an ingest
    that did not complete."""
    from .schema import ResolvedSchema

    if not data_dir.is_dir():
        raise SlimpError(f"{data_dir}: no such folder (run slimp ingest first)")
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise SlimpError(
            f"{data_dir}: no manifest.json (not an ingested folder, or an interrupted ingest)"
        )
    manifest = read_json(manifest_path)
    if manifest.get("complete") is not True:
        raise SlimpError(f"{manifest_path}: ingest did not complete; run slimp ingest again")
    return manifest, ResolvedSchema.load(data_dir / "schema.json")


def check_shard(path: Path, entries: list[_Entry], listed: dict, *, sha256: bool) -> None:
    """The shard holds what manifest.json says: patients, images, bytes (and sha256 if asked).

    A shard cut at a patient boundary is still a valid tar, so only these counts reveal that
    patients are missing."""
    images = _n_images(entries)
    problems = []
    for what, have in (("patients", len(entries)), ("images", images)):
        want = listed.get(what)
        if want is not None and want != have:
            problems.append(f"{have} {what} where manifest.json lists {want}")
    size = path.stat().st_size
    if not problems and listed.get("bytes") is not None and listed["bytes"] != size:
        problems.append(f"{size} bytes where manifest.json lists {listed['bytes']}")
    if not problems and sha256 and listed.get("sha256"):
        if sha256_file(path) != listed["sha256"]:
            problems.append("a sha256 that differs from manifest.json")
    if problems:
        raise SlimpError(
            f"{path}: shard holds {', '.join(problems)} (truncated or changed after ingest); "
            "re-run slimp ingest"
        )


def _n_images(entries: list[_Entry]) -> int:
    return sum(sum(1 for k in e.members if k not in _JSON_MEMBERS) for e in entries)


def verify_shards(data_dir: str | Path) -> dict:
    """Check every shard of an ingested folder against manifest.json, sha256 included.

    Returns {"shards", "patients", "images"}; raises SlimpError naming the first bad shard."""
    index = ShardIndex.open(data_dir, verify=True)
    shards = {e.shard for e in index._entries}
    images = _n_images(index._entries)
    return {"shards": len(shards), "patients": len(index), "images": images}


def _index_tar(path: Path) -> list[_Entry]:
    """Group a tar's members by sample key, recording each member's data offset and size.

    Read once per file version per process (`_tar_index`); the result is shared between the
    callers: treat it (and its entries) as read-only."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SlimpError(f"{path}: unreadable shard ({exc})") from None
    return _tar_index((str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


# Keyed by (path, device, inode, size, mtime): a shard is never rewritten in place (ingest
# publishes by rename, which changes the inode), and one process (the paper-tables pipeline, a
# notebook) opens the same folder for every stage. Reading the headers costs ~0.1 ms per
# member with `tarfile`: 0.1-0.2 s a shard of the PAD subset.
@functools.lru_cache(maxsize=256)
def _tar_index(key: tuple) -> list[_Entry]:
    return _read_tar_index(Path(key[0]))


def _read_tar_index(path: Path) -> list[_Entry]:
    entries: list[_Entry] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                key, _, suffix = base.partition(".")
                if not entries or entries[-1].key != key:
                    entries.append(_Entry(shard=path, key=key, members={}))
                entries[-1].members[suffix] = (info.offset_data, info.size)
    except (tarfile.TarError, OSError) as exc:
        raise SlimpError(f"{path}: unreadable shard ({exc})") from None
    return entries


def iter_lesions(index: ShardIndex) -> Iterator[tuple[int, int, PatientRecord]]:
    """Every lesion entry as (patient_idx, lesion_idx, PatientRecord), in a fixed order."""
    for i in range(len(index)):
        record = index.patient(i)
        for j in range(len(record.lesions)):
            yield i, j, record


@dataclass(frozen=True)
class Case:
    """One lesion of one patient and the index (in the patient's lesions) of each modality's image."""

    patient: int  # patient index in the ShardIndex
    lesion_id: str
    images: tuple[tuple[str, int], ...]  # (modality, lesion index), first image of each modality

    def image(self, modality: str) -> int | None:
        return dict(self.images).get(modality)


def case_index(index, modalities: Sequence[str]) -> list[Case]:
    """The cases of a ShardIndex: lesions grouped by lesion id, in shard order.

    Only images whose lesions.json `modality` is one of `modalities` count; a lesion with
    none is left out. Raises SlimpError when no image records a modality (data ingested
    without a schema that names them, e.g. PAD-UFES-20).
    """
    cases = []
    for p in range(len(index)):
        by_lesion: dict[str, dict[str, int]] = {}
        for j, les in enumerate(index.patient(p).lesions):
            got = by_lesion.setdefault(str(les["lesion_id"]), {})
            modality = les.get("modality")
            if modality in modalities and modality not in got:
                got[modality] = j
        for lesion_id, got in by_lesion.items():
            if got:
                images = tuple((m, got[m]) for m in modalities if m in got)
                cases.append(Case(p, lesion_id, images))
    if not cases:
        raise SlimpError(
            f"{getattr(index, 'data_dir', 'the data')}: no image records a modality "
            f"({' or '.join(modalities)}); SM3 needs data ingested with a schema that names "
            "them (derm7pt, or `slimp synth --paired`)"
        )
    return cases
