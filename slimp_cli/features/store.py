"""HDF5 feature store: what `slimp embed` writes and `probe`/`retrieve`/`extrapolate` read.

Layout (DESIGN.md "Feature store", docs/internals.md), N lesions (images), D dims per level::

    attrs: format="slimp-feature-store", version, complete, config (JSON), schema (JSON), variant
    lesion_id, patient_id          [N] utf-8 strings
    label                          [N] int64, attr classes (JSON list; -1 = unknown)
    malignant                      [N] int8 (1 malignant, 0 benign, -1 unknown)
    features/{image,lesion,patient} [N, D] float32 (patient repeated per lesion; absent if none)
    features/{derm,clinic,derm_mm,clinic_mm,labels} [N, D] float32 (SM3 stores: one row per
                                   case; image = concat(derm, clinic), see models/sm3.py)
    modalities                     [N, M] int8 (SM3 stores: 1 = the case has an image of that
                                   modality), attr names (JSON list, e.g. dermoscopic, clinical)
    raw/{lesion,patient}           [N, R] float32, attrs columns, source_columns (JSON lists)
    model/phenotype_weight [D, 2D], model/phenotype_bias [D]   (nested models)
    pseudo/<strategy>/{lesion, patient, lesion_index, patient_index, similarity}
    split                          [N] "train" | "holdout" (attrs fingerprint, fraction): the
                                   run's held-out patients; absent when the data is not the
                                   run's training data (unless set by `mark_split`)
    official_split                 [N] utf-8 "train" | "valid" | "test": the dataset's own
                                   fixed split (Derm7pt's index files, lesions.json
                                   `official_split`); absent when the data has none

A store is written under a temporary name and renamed when complete (`paths.AtomicOutput`: one
writer per store, an existing store replaced only with `overwrite`, checked again at the
rename); `complete=True` is the last attribute written, so a reader can tell an interrupted
write from a finished one. The attribute `widths` (JSON: dataset -> row width) records every
per-row dataset's width; `FeatureStore.open` checks every per-row dataset against it and against
the row count of `lesion_id` (the index). Readable with h5py alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from ..core.errors import SlimpError, raise_if_interrupted
from ..core.paths import AtomicOutput, write_error

FORMAT = "slimp-feature-store"
VERSION = 1
LEVELS = ("image", "lesion", "patient", "derm", "clinic", "derm_mm", "clinic_mm", "labels")
# SM3's per-branch levels: `image` is already their concatenation, so a probe asked for "all the
# store has" uses image (and lesion/patient) only; name these with --features to probe them.
BRANCH_LEVELS = ("derm", "clinic", "derm_mm", "clinic_mm", "labels")
RAW_LEVELS = ("lesion", "patient")
PSEUDO_STRATEGIES = ("ilp", "il", "ii")
SPLIT_SIDES = ("train", "holdout")
OFFICIAL_SPLITS = ("train", "valid", "test")
_STR = h5py.string_dtype("utf-8")
# HDF5 >= 1.10 file format: dense attribute storage, so a large schema JSON attr always fits.
_LIBVER = ("v110", "latest")


class FeatureStoreWriter:
    """Write a feature store in row chunks; memory stays bounded by the chunk, not by N.

    Usage::

        with FeatureStoreWriter(out, n=N, dims={"image": D, "lesion": D}, config=cfg,
                                schema=schema_dict, classes=classes, variant="nested",
                                raw_columns={"lesion": (cols, sources)}) as w:
            for batch in ...:
                w.append(lesion_id=..., patient_id=..., label=..., malignant=...,
                         features={"image": [b, D], "lesion": [b, D]},
                         raw={"lesion": [b, R]})
            w.set_phenotype(weight [D, 2D], bias [D])
        # leaving the block without an exception renames the file to `out` (complete=True);
        # an exception deletes the temporary file.

    `n` is the exact number of rows (checked on close) or None when unknown (datasets grow).
    `overwrite`: replace an existing store at `path` (else it is refused, when the writer is
    created and again at the final rename). A full disk is one line (`paths.write_error`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n: int | None,
        dims: Mapping[str, int],
        config: Mapping,
        schema: Mapping | None,
        classes: Sequence[str],
        variant: str = "nested",
        raw_columns: Mapping[str, tuple[Sequence[str], Sequence[str]]] | None = None,
        chunk_rows: int = 4096,
        modalities: Sequence[str] | None = None,
        official_split: bool = False,
        overwrite: bool = False,
    ) -> None:
        unknown = set(dims) - set(LEVELS)
        if unknown:
            raise SlimpError(
                f"feature store: unknown feature level(s) {sorted(unknown)}; use {LEVELS}"
            )
        bad_raw = set(raw_columns or {}) - set(RAW_LEVELS)
        if bad_raw:
            raise SlimpError(
                f"feature store: unknown raw level(s) {sorted(bad_raw)}; use {RAW_LEVELS}"
            )
        self.path = Path(path)
        self.n = n
        self.dims = {k: int(v) for k, v in dims.items()}
        self.rows = 0
        self._closed = False
        self._ds: dict[str, h5py.Dataset] = {}  # the per-row datasets, open while writing
        check_store_destination(self.path, overwrite=overwrite)
        self._out = AtomicOutput(
            self.path,
            overwrite=overwrite,
            check=lambda: check_store_destination(self.path, overwrite=overwrite),
        )
        self.tmp = self._out.start()  # the store's lock, held until close() or abort()
        try:
            self.f = h5py.File(self.tmp, "w", libver=_LIBVER)
            self._create(
                n,
                config,
                schema,
                classes,
                variant,
                raw_columns,
                chunk_rows,
                modalities,
                official_split,
            )
        except BaseException as exc:
            self.abort()
            if (err := h5_write_failure(exc)) is not None:  # unwritable folder, full disk...
                raise write_error(err, self.path) from None
            raise

    def _create(
        self,
        n,
        config,
        schema,
        classes,
        variant,
        raw_columns,
        chunk_rows,
        modalities,
        official_split,
    ):
        f = self.f
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["complete"] = False  # set True last, in close()
        f.attrs["config"] = json.dumps(dict(config), sort_keys=True)
        f.attrs["schema"] = json.dumps(dict(schema) if schema is not None else None, sort_keys=True)
        f.attrs["variant"] = variant
        n0 = n or 0
        chunk = max(1, int(chunk_rows))

        def make(name: str, dtype, width: int | None = None) -> h5py.Dataset:
            shape = (n0,) if width is None else (n0, width)
            maxshape = (None,) if width is None else (None, width)
            # ~1 MiB chunks: they fit h5py's default chunk cache, so small appends stay cheap
            chunks = (
                (chunk,)
                if width is None
                else (max(1, min(chunk, (1 << 18) // max(1, width))), width)
            )
            # held open until close: a Dataset dropped after each append would be closed by
            # h5py's destructor, which writes its chunk cache out there and, on a full disk,
            # can only print the failure (the store would go on as if written)
            ds = self._ds[name] = f.create_dataset(
                name, shape=shape, maxshape=maxshape, dtype=dtype, chunks=chunks
            )
            return ds

        make("lesion_id", _STR)
        make("patient_id", _STR)
        make("label", np.int64).attrs["classes"] = json.dumps(list(classes))
        make("malignant", np.int8)
        self.modalities = list(modalities) if modalities else None
        if self.modalities:
            make("modalities", np.int8, len(self.modalities)).attrs["names"] = json.dumps(
                self.modalities
            )
        self.official_split = bool(official_split)
        if self.official_split:
            make("official_split", _STR)
        for level, d in self.dims.items():
            make(f"features/{level}", np.float32, d)
        self.raw_levels: list[str] = []
        for level, (columns, sources) in (raw_columns or {}).items():
            columns, sources = list(columns), list(sources)
            if len(columns) != len(sources):
                raise SlimpError(
                    f"feature store: raw/{level} has {len(columns)} columns but {len(sources)} source columns"
                )
            ds = make(f"raw/{level}", np.float32, len(columns))
            ds.attrs["columns"] = json.dumps(columns)
            ds.attrs["source_columns"] = json.dumps(sources)
            self.raw_levels.append(level)
        f.attrs["widths"] = json.dumps(
            {name: int(ds.shape[1]) for name, ds in self._ds.items() if ds.ndim == 2},
            sort_keys=True,
        )

    def append(
        self,
        *,
        lesion_id: Sequence[str],
        patient_id: Sequence[str],
        label: Sequence[int] | np.ndarray,
        malignant: Sequence[int] | np.ndarray,
        features: Mapping[str, np.ndarray],
        raw: Mapping[str, np.ndarray] | None = None,
        modalities: np.ndarray | None = None,
        official_split: Sequence[str] | None = None,
        at: int | None = None,
    ) -> None:
        """Append b rows. Shape: ids/label/malignant [b]; features[level] [b, D]; raw[level] [b, R];
        modalities [b, M] (0/1; required when the writer declared modalities); official_split
        [b] of OFFICIAL_SPLITS (required when the writer declared it).

        Every level given in `dims` (and every raw level declared) must be present. `at` writes
        the rows at rows [at, at + b) instead (a writer with a declared n, filled out of order,
        each row once: close() checks the count), e.g. shards embedded by parallel readers.
        """
        raise_if_interrupted()  # a Ctrl-C swallowed by a finaliser stops the writing here
        b = len(lesion_id)
        raw = dict(raw or {})
        if set(features) != set(self.dims):
            raise SlimpError(
                f"feature store: append got features {sorted(features)}, expected {sorted(self.dims)}"
            )
        if set(raw) != set(self.raw_levels):
            raise SlimpError(
                f"feature store: append got raw {sorted(raw)}, expected {sorted(self.raw_levels)}"
            )
        columns = {
            "lesion_id": np.asarray(lesion_id, dtype=object),
            "patient_id": np.asarray(patient_id, dtype=object),
            "label": np.asarray(label, dtype=np.int64),
            "malignant": np.asarray(malignant, dtype=np.int8),
        }
        columns.update(
            {f"features/{k}": np.asarray(v, dtype=np.float32) for k, v in features.items()}
        )
        columns.update({f"raw/{k}": np.asarray(v, dtype=np.float32) for k, v in raw.items()})
        if self.modalities:
            if modalities is None:
                raise SlimpError("feature store: append needs the rows' modalities")
            columns["modalities"] = np.asarray(modalities, dtype=np.int8)
        if self.official_split:
            given = [] if official_split is None else [str(v) for v in official_split]
            bad = sorted(set(given) - set(OFFICIAL_SPLITS))
            if official_split is None or bad:
                raise SlimpError(
                    f"feature store: official_split {bad or 'missing'}; every row needs one of "
                    f"{OFFICIAL_SPLITS}"
                )
            columns["official_split"] = np.asarray(official_split, dtype=object)
        for name, arr in columns.items():
            width = self._ds[name].shape[1:]
            if arr.shape != (b, *width):
                raise SlimpError(
                    f"feature store: {name} chunk has shape {arr.shape}, expected {(b, *width)}"
                )
        if at is not None and (self.n is None or at < 0):
            raise SlimpError("feature store: rows written `at` a position need a declared n >= 0")
        start = self.rows if at is None else at
        end = start + b
        if self.n is not None and end > self.n:
            raise SlimpError(f"feature store: appending {b} rows exceeds the declared n={self.n}")
        try:
            for name, arr in columns.items():
                ds = self._ds[name]
                if ds.shape[0] < end:  # only when n is unknown: grow geometrically
                    ds.resize(max(end, 2 * ds.shape[0]), axis=0)
                ds[start:end] = arr
        except (OSError, RuntimeError) as exc:  # a full disk: one line, whoever catches it
            if (err := h5_write_failure(exc)) is None:
                raise
            self.abort()
            raise write_error(err, self.path) from None
        self.rows += b

    def set_phenotype(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Store the phenotype layer z = weight @ concat(w, h) + bias. Shape: weight [D, 2D], bias [D]."""
        weight, bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
        if (
            weight.ndim != 2
            or weight.shape[1] != 2 * weight.shape[0]
            or bias.shape != (weight.shape[0],)
        ):
            raise SlimpError(
                f"feature store: phenotype weight {weight.shape} / bias {bias.shape} are not [D, 2D] / [D]"
            )
        for name, arr in (("model/phenotype_weight", weight), ("model/phenotype_bias", bias)):
            if name in self.f:
                del self.f[name]
            self.f.create_dataset(name, data=arr)

    def set_split(self, sides: Sequence[str], *, fingerprint: str, fraction: float) -> None:
        """Per row, `train` or `holdout`: the side of the run's held-out patients
        (holdout.json) each row's patient is on. Shape: sides [n]."""
        _write_split(self.f, self.n, sides, fingerprint=fingerprint, fraction=fraction)

    def close(self) -> Path:
        """Check the row count, mark complete, rename onto the final path. Returns the path."""
        if self._closed:
            return self.path
        if self.n is not None and self.rows != self.n:
            self.abort()
            raise SlimpError(
                f"{self.path}: wrote {self.rows} rows but n={self.n} was declared; store not written"
            )
        try:
            if self.n is None:
                for ds in self._ds.values():
                    ds.resize(self.rows, axis=0)
            self.f.attrs["complete"] = True
            self.f.flush()  # a full disk fails here, with the file still open
            self.f.close()
        except (OSError, RuntimeError) as exc:
            self.abort()
            if (err := h5_write_failure(exc)) is None:
                raise
            raise write_error(err, self.path) from None
        self._closed = True
        self._out.commit()  # the finished temp file says complete=True: removed on failure
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file (nothing is left that looks like a store)."""
        if self._closed:
            return
        self._closed = True
        try:
            if getattr(self, "f", None) is not None:
                discard_h5(self.f)
        finally:
            self._out.abort()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        self.abort()
        if (err := h5_write_failure(exc, self._out)) is not None:  # h5py: a full disk...
            raise write_error(err, self.path) from None


def h5_write_failure(exc: BaseException, out: AtomicOutput | None = None) -> OSError | None:
    """The OSError behind a failed HDF5 write, or None when `exc` is something else. h5py
    raises OSError, or RuntimeError (flush, close) whose text holds HDF5's "errno = 28"; with
    `out`, an OSError about another file (an input) is not a failure of this output."""
    if isinstance(exc, OSError):
        return exc if out is None or out.owns(exc) else None
    if isinstance(exc, RuntimeError) and (m := re.search(r"errno = (\d+)", str(exc))):
        code = int(m[1])
        return OSError(code, os.strerror(code))
    return None


def discard_h5(f: h5py.File) -> None:
    """Close an h5py file that is being thrown away, whatever the disk says.

    Its descriptor is first pointed at /dev/null: HDF5 writes its caches out on close, and on a
    full disk (or past a file-size limit, which binds an in-memory file too) that write fails
    and leaves the file half-closed, which h5py's destructor meets again at exit and crashes
    the process (a segmentation fault)."""
    with contextlib.suppress(Exception):
        if f.id.valid:
            fd = f.id.get_vfd_handle()
            sink = os.open(os.devnull, os.O_RDWR)
            os.dup2(sink, fd)
            os.close(sink)
    with contextlib.suppress(Exception):
        f.close()


def _write_split(f, n, sides, *, fingerprint: str, fraction: float) -> None:
    sides = np.asarray(sides, dtype=object)
    bad = set(sides.tolist()) - set(SPLIT_SIDES)
    if bad:
        raise SlimpError(f"feature store: split values {sorted(bad)}; use {SPLIT_SIDES}")
    if n is not None and len(sides) != n:
        raise SlimpError(f"feature store: split has {len(sides)} rows, expected {n}")
    if "split" in f:
        del f["split"]
    ds = f.create_dataset("split", data=sides, dtype=_STR)
    ds.attrs["fingerprint"] = fingerprint
    ds.attrs["fraction"] = float(fraction)


def mark_split(
    path: str | os.PathLike, sides: Sequence[str], *, fingerprint: str, fraction: float
) -> None:
    """Set the `split` of a complete store in place: the held-out patients of another run on
    this data, for a store embedded by a model that never trained on it (its rows are then
    scored on the same patients as that run's: benchmarks/paper_tables.py). In place, so call
    it before the store is published (on a temporary name renamed afterwards)."""
    FeatureStore.open(path).close()  # a complete store, or a one-line error
    with h5py.File(path, "r+") as f:
        _write_split(f, int(f["label"].shape[0]), sides, fingerprint=fingerprint, fraction=fraction)


def check_store_destination(path: str | os.PathLike, *, overwrite: bool) -> None:
    """SlimpError unless a store can be written at `path`: called before any work is done, so
    a bad `--out` fails in a second, not after the whole dataset was embedded.

    An existing store is only replaced with `overwrite` (it may hold pseudo/ features that
    extrapolate added); a folder is never replaced."""
    path = Path(path)
    if path.is_dir():
        raise SlimpError(
            f"{path} is a folder; give the store's file name, e.g. {path / 'features.h5'}"
        )
    if path.exists() and not overwrite:
        raise SlimpError(f"{path} already exists; add --overwrite to replace it")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise SlimpError(f"{path}: {parent} is not a folder")
    if not parent.is_dir():
        raise SlimpError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SlimpError(f"{path}: output folder {parent} is not writable")


def validate_layout(f: h5py.File, path: Path) -> None:
    """SlimpError naming the first dataset of a damaged store: every per-row dataset (ids,
    labels, features, raw, modalities, split, pseudo) must have one row per entry of
    `lesion_id` (the index) and the width the store records (`widths`, the raw columns, the
    modality names); pseudo features the width of the image features they stand beside."""
    damaged = "the store is damaged; re-run slimp embed"
    if not isinstance(f.get("lesion_id"), h5py.Dataset):
        raise SlimpError(f"{path}: no lesion_id dataset; {damaged}")
    n = int(f["lesion_id"].shape[0]) if f["lesion_id"].ndim == 1 else -1
    if n < 0:
        raise SlimpError(f"{path}: lesion_id is not one value per row; {damaged}")
    recorded = json.loads(f.attrs.get("widths", "{}"))
    widths: dict[str, int] = {name: int(w) for name, w in recorded.items()}
    for level in RAW_LEVELS:
        if isinstance(f.get(f"raw/{level}"), h5py.Dataset):
            widths[f"raw/{level}"] = len(json.loads(f[f"raw/{level}"].attrs.get("columns", "[]")))
    if isinstance(f.get("modalities"), h5py.Dataset):
        widths["modalities"] = len(json.loads(f["modalities"].attrs.get("names", "[]")))
    rows = _row_datasets(f) + (["split"] if "split" in f else [])
    if isinstance(f.get("pseudo"), h5py.Group):
        for strategy in f["pseudo"]:
            group = f[f"pseudo/{strategy}"]
            names = list(group) if isinstance(group, h5py.Group) else []
            rows += [f"pseudo/{strategy}/{k}" for k in names]
            if "image" in f.get("features", {}):
                image = int(f["features/image"].shape[-1])
                widths.update({f"pseudo/{strategy}/{k}": image for k in ("lesion", "patient")})
    for name in rows:
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise SlimpError(f"{path}: {name} is not a dataset; {damaged}")
        if ds.ndim == 0 or ds.shape[0] != n:
            got = ds.shape[0] if ds.ndim else "no"
            raise SlimpError(
                f"{path}: {name} has {got} rows but the store's index (lesion_id) has {n}; "
                + damaged
            )
        want = widths.get(name)
        two_d = name.startswith(("features/", "raw/")) or name == "modalities"
        if (two_d and ds.ndim != 2) or (want is not None and ds.shape[1:] != (want,)):
            raise SlimpError(
                f"{path}: {name} has shape {tuple(ds.shape)}, expected "
                f"({n}, {want if want is not None else 'D'}); {damaged}"
            )


def _row_datasets(f: h5py.File) -> list[str]:
    names = ["lesion_id", "patient_id", "label", "malignant"]
    for name in ("modalities", "official_split"):
        if name in f:
            names.append(name)
    for group in ("features", "raw"):
        if group in f:
            names += [f"{group}/{k}" for k in f[group]]
    return names


class FeatureStore:
    """Read-only view of a complete store. Use `FeatureStore.open(path)` (a context manager)."""

    def __init__(self, f: h5py.File, path: Path) -> None:
        self.f = f
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureStore:
        """Open and validate. Raises SlimpError: missing, not HDF5, not a slimp store, incomplete."""
        path = Path(path)
        if not path.is_file():
            raise SlimpError(f"{path}: feature store not found")
        if not h5py.is_hdf5(path):
            raise SlimpError(
                f"{path}: not an HDF5 file (expected a feature store from slimp embed)"
            )
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise SlimpError(f"{path}: cannot open HDF5 file ({e})") from None
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            f.close()
            raise SlimpError(f"{path}: not a slimp feature store (format attribute is {fmt!r})")
        version = int(f.attrs.get("version", -1))
        if version > VERSION:
            f.close()
            raise SlimpError(
                f"{path}: feature store version {version} is newer than this slimp ({VERSION})"
            )
        if not bool(f.attrs.get("complete", False)):
            f.close()
            raise SlimpError(f"{path} is incomplete (interrupted embed?); re-run slimp embed")
        try:
            validate_layout(f, path)
        except BaseException:
            f.close()
            raise
        return cls(f, path)

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- rows --------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.f["label"].shape[0])

    @property
    def split(self) -> np.ndarray | None:
        """Per row `train`/`holdout` (the run's held-out patients), or None when the store's
        data is not what the run trained on (then no row was seen in training)."""
        if "split" not in self.f:
            return None
        return self.f["split"].asstr()[()].astype(object)

    @property
    def official_split(self) -> np.ndarray | None:
        """Per row "train"/"valid"/"test": the dataset's own fixed split (Derm7pt's index
        files), or None when the store's data has none."""
        if "official_split" not in self.f:
            return None
        return self.f["official_split"].asstr()[()].astype(object)

    @property
    def split_fingerprint(self) -> str | None:
        return str(self.f["split"].attrs["fingerprint"]) if "split" in self.f else None

    @property
    def lesion_id(self) -> np.ndarray:
        return self.f["lesion_id"].asstr()[()].astype(object)

    @property
    def patient_id(self) -> np.ndarray:
        return self.f["patient_id"].asstr()[()].astype(object)

    @property
    def label(self) -> np.ndarray:
        return self.f["label"][()].astype(np.int64)

    @property
    def classes(self) -> list[str]:
        return json.loads(self.f["label"].attrs.get("classes", "[]"))

    @property
    def malignant(self) -> np.ndarray:
        return self.f["malignant"][()].astype(np.int8)

    @property
    def melanoma(self) -> np.ndarray | None:
        """Per row 1 (its class is one of the schema's `melanoma` classes), 0 (another
        diagnosis) or -1 (no label): the `melanoma` task (SM3's DIAG MEL). None when the
        store's resolved schema declares no melanoma classes. Shape: [N] int8."""
        schema = self.schema or {}
        if "melanoma" not in schema:
            return None
        is_melanoma = np.array([c in set(schema["melanoma"]) for c in self.classes] + [False])
        label = self.label
        return np.where(label >= 0, is_melanoma[np.maximum(label, 0)], -1).astype(np.int8)

    @property
    def modalities(self) -> tuple[np.ndarray, list[str]] | None:
        """(present [N, M] bool, modality names [M]) of an SM3 store (one row per case), else None."""
        if "modalities" not in self.f:
            return None
        ds = self.f["modalities"]
        return ds[()].astype(bool), json.loads(ds.attrs["names"])

    # --- model / provenance --------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return json.loads(self.f.attrs.get("config", "{}"))

    @property
    def schema(self) -> dict | None:
        return json.loads(self.f.attrs.get("schema", "null"))

    @property
    def variant(self) -> str:
        return str(self.f.attrs.get("variant", ""))

    @property
    def phenotype(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(weight [D, 2D], bias [D]) of the phenotype layer, or None (flat/image models)."""
        if "model/phenotype_weight" not in self.f:
            return None
        return self.f["model/phenotype_weight"][()], self.f["model/phenotype_bias"][()]

    # --- features ------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """Levels present, in the canonical order image, lesion, patient."""
        have = self.f["features"].keys() if "features" in self.f else []
        return [k for k in LEVELS if k in have]

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(self.f[f"features/{k}"].shape[1]) for k in self.feature_names}

    def summary(self) -> dict:
        """Rows, feature and raw widths and the config: what the CLI prints after `embed`."""
        return {
            "path": str(self.path),
            "lesions": int(self.n),
            "features": {k: int(v) for k, v in self.dims.items()},
            "raw": {
                k: int(self.f[f"raw/{k}"].shape[1]) for k in RAW_LEVELS if f"raw/{k}" in self.f
            },
            "config": self.config,
        }

    def dataset(self, name: str) -> h5py.Dataset:
        """The on-disk [N, D] dataset of one level, for chunked reading of large stores."""
        self._require(name)
        return self.f[f"features/{name}"]

    def block(self, name: str) -> np.ndarray:
        """One level in memory. Shape: [N, D] float32. SlimpError when a value is NaN/inf."""
        return self._finite(self.dataset(name)[()], f"features/{name}")

    def _finite(self, values: np.ndarray, name: str) -> np.ndarray:
        """`values` unchanged, or a SlimpError naming the first row holding NaN or inf (a
        classifier would fail on it with a traceback, a search would rank it at random)."""
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
            row = int(bad[0])
            raise SlimpError(
                f"{self.path}: {name} holds NaN or infinite values in {len(bad)} row(s), first "
                f"row {row} (lesion {self.f['lesion_id'].asstr()[row]}); re-embed it"
            )
        return values

    def features(self, names: Sequence[str]) -> np.ndarray:
        """Concatenation of the named levels. Shape: [N, sum D] float32."""
        if not names:
            raise SlimpError(f"{self.path}: no feature level requested")
        return np.concatenate([self.block(k) for k in names], axis=1)

    def _require(self, name: str) -> None:
        if name not in self.feature_names:
            have = ", ".join(self.feature_names) or "none"
            raise SlimpError(f"{self.path} has no features/{name} (it has: {have})")

    # --- raw metadata --------------------------------------------------------------------------
    def raw(self, level: str) -> tuple[np.ndarray, list[str], list[str]] | None:
        """(matrix [N, R] float32, columns, source_columns) of encoded raw metadata, or None."""
        name = f"raw/{level}"
        if name not in self.f:
            return None
        ds = self.f[name]
        return ds[()], json.loads(ds.attrs["columns"]), json.loads(ds.attrs["source_columns"])

    # --- pseudo features -----------------------------------------------------------------------
    @property
    def pseudo_strategies(self) -> list[str]:
        # ".tmp-*" groups are interrupted extrapolate runs, not results
        return (
            sorted(k for k in self.f["pseudo"].keys() if not k.startswith("."))
            if "pseudo" in self.f
            else []
        )

    def pseudo(self, strategy: str) -> dict[str, np.ndarray]:
        """Arrays of pseudo/<strategy> (lesion [N, D], patient [N, D] if any, indices, similarity)."""
        name = f"pseudo/{strategy}"
        if strategy.startswith(".") or name not in self.f:
            have = ", ".join(self.pseudo_strategies) or "none"
            raise SlimpError(
                f"{self.path} has no pseudo/{strategy} features (it has: {have}); "
                f"run slimp extrapolate REFERENCE {self.path} --strategy {strategy}"
            )
        g = self.f[name]
        # the feature vectors must be finite; similarities are reports, read as they are
        return {
            k: self._finite(g[k][()], f"{name}/{k}") if k in ("lesion", "patient") else g[k][()]
            for k in g.keys()
        }


class PseudoWriter:
    """Add `pseudo/<strategy>/` to a store without ever modifying the store in place.

    The store is rewritten to a temporary sibling (every object copied, the strategy's group
    new) and renamed over the original only when complete: a kill at any moment leaves the
    original exactly as it was, and re-runs never grow the file (nothing is left unreclaimed).

    Usage::

        with PseudoWriter(path, strategy, n=N, widths={"lesion": D, "lesion_index": None, ...},
                          attrs={...}) as out:
            out["lesion"][a:b] = ...
        # `out[name]` are h5py datasets of the new group; widths None = 1-D int64 / float32
    """

    INDEX_NAMES = ("lesion_index", "patient_index")

    def __init__(
        self,
        path: str | os.PathLike,
        strategy: str,
        *,
        n: int,
        widths: Mapping[str, int | None],
        attrs: Mapping[str, str],
    ) -> None:
        if strategy not in PSEUDO_STRATEGIES:
            raise SlimpError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(PSEUDO_STRATEGIES)}"
            )
        FeatureStore.open(path).close()  # a complete store, or a one-line error
        self.path = Path(path)
        self._identity = _identity(self.path)
        self.strategy = strategy
        self._n, self._widths, self._attrs = n, dict(widths), dict(attrs)
        self.f: h5py.File | None = None
        # the store itself is the output: one writer (a second extrapolate, an embed
        # --overwrite) at a time; it exists, so the rename replaces it
        self._out = AtomicOutput(self.path, overwrite=True, check=self._unchanged)

    def _unchanged(self) -> None:
        """Under the store's lock: SlimpError when another process replaced the store since
        it was read (its pseudo features would be computed from rows no longer there)."""
        if _identity(self.path) != self._identity:
            raise SlimpError(
                f"{self.path} was replaced by another process while this command read it; "
                "run the command again"
            )

    def __enter__(self) -> dict[str, h5py.Dataset]:
        name = f"pseudo/{self.strategy}"
        self.tmp = self._out.start()
        try:
            self.f = h5py.File(self.tmp, "w", libver=_LIBVER)
            with h5py.File(self.path, "r") as src:
                for key, value in src.attrs.items():
                    self.f.attrs[key] = value
                self.f.attrs["complete"] = False  # set True last, in __exit__
                for key in src:
                    if key != "pseudo":
                        src.copy(src[key], self.f, name=key)
                if "pseudo" in src:
                    group = self.f.create_group("pseudo")
                    for key in src["pseudo"]:
                        if key != self.strategy and not key.startswith("."):
                            src.copy(src["pseudo"][key], group, name=key)
            g = self.f.create_group(name)
            out = {}
            for key, width in self._widths.items():
                if width is None:
                    dtype = np.int64 if key in self.INDEX_NAMES else np.float32
                    out[key] = g.create_dataset(key, (self._n,), dtype)
                else:
                    out[key] = g.create_dataset(key, (self._n, int(width)), np.float32)
            g.attrs.update(self._attrs)
        except BaseException as exc:
            self._discard()
            if (err := h5_write_failure(exc, self._out)) is not None:  # the disk is full...
                raise write_error(err, self.path) from None
            raise
        return out

    def _discard(self) -> None:
        try:
            if self.f is not None:
                discard_h5(self.f)
        finally:
            self._out.abort()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            if (err := h5_write_failure(exc, self._out)) is not None:
                raise write_error(err, self.path) from None
            return
        try:
            self.f.attrs["complete"] = True
            self.f.flush()  # a full disk fails here, with the file still open
            self.f.close()
        except (OSError, RuntimeError) as e:
            self._discard()
            if (err := h5_write_failure(e)) is None:
                raise
            raise write_error(err, self.path) from None
        self._out.commit()


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
