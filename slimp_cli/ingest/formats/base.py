"""What every dataset adapter produces: a table of strings plus a way to find each image.

An adapter knows one release's file layout (where the table is, how images are named); it
does not type values, check roles or write anything: `slimp_cli.ingest` does that the same way
for every dataset, driven by the dataset schema.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ...core.errors import SlimpError
from ..images import ImageLocator, ImageRef

# Rows read and typed at a time from a CSV: ingest holds the raw strings of one chunk, never of
# the whole table (SLICE-3D's 401,059 x 55 cells are ~1.5 GB as Python strings).
CHUNK_ROWS = 5_000


@dataclass(kw_only=True)
class SourceTable:
    """One dataset as read from disk: either a whole `frame` or chunks read lazily (`reader`).

    frame: every cell a string ("" = empty), column names stripped; one row per image.
    rows: the 1-based data-row number in the file of each frame row (header not counted).
    reader: instead of frame/rows, a function yielding such frames in file order (rows are then
        numbered 1.. consecutively); `columns` names their columns.
    path: the table file (named in errors and in the manifest).
    locate: (column, cell) -> ImageRef or None when no file exists for the reference.
    notes: facts about the read worth recording in the manifest (e.g. ignored legend lines).
    row_splits: the release's own split of each data row (1-based row -> "train" | "valid" |
        "test"; Derm7pt's index files), recorded per lesion in the shards; None when it has none.
    """

    path: Path
    locate: Callable[[str, str], ImageRef | None]
    notes: list[str] = field(default_factory=list)
    frame: pd.DataFrame | None = None
    rows: list[int] | None = None
    reader: Callable[[], Iterator[pd.DataFrame]] | None = None
    columns: list[str] = field(default_factory=list)
    row_splits: dict[int, str] | None = None

    def __post_init__(self) -> None:
        if (self.frame is None) == (self.reader is None):
            raise ValueError("a SourceTable has either a frame or a reader")
        if self.frame is not None:
            self.columns = list(self.frame.columns)
            if self.rows is None:
                self.rows = list(range(1, len(self.frame) + 1))

    def close(self) -> None:
        """Release what `locate` holds open (an HDF5 file); called before workers fork."""
        close = getattr(self.locate, "close", None)
        if close is not None:
            close()

    def chunks(self) -> Iterator[tuple[pd.DataFrame, list[int]]]:
        """(frame, row numbers) pieces of the table in file order."""
        if self.frame is not None:
            yield self.frame, self.rows
            return
        start = 1
        for chunk in self.reader():
            yield chunk, list(range(start, start + len(chunk)))
            start += len(chunk)


class Adapter(abc.ABC):
    """Base adapter: subclasses set `name`, `schema`, `help` and implement `read`."""

    name: str = ""
    schema: str | None = None  # built-in schema used when the user gives none
    help: str = ""

    @abc.abstractmethod
    def read(self, source: Path, schema: dict) -> SourceTable:
        """Read the release at `source` into a table of rows with located images."""

    def default_schema(self, source: Path) -> str | Path | None:
        """The schema to use when the user gives no --schema (a built-in name or a file)."""
        return self.schema


def _csv_options(sep: str | None) -> dict:
    return dict(
        sep=sep,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        skipinitialspace=True,
        encoding_errors="replace",
        engine="python" if sep is None else "c",
    )


def _check_table_path(path: Path) -> None:
    if not path.exists():
        raise SlimpError(f"{path}: no such file")
    if not path.is_file():
        raise SlimpError(f"{path}: is a folder, not a table (give the CSV file)")


def _parse_error(path: Path, exc: Exception) -> SlimpError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SlimpError(f"{path}: cannot parse the table ({first})")


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.map(lambda v: v.strip() if isinstance(v, str) else ("" if v is None else str(v)))


_PARSE_ERRORS = (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError)


def read_csv_strings(path: Path, *, sep: str | None = ",") -> pd.DataFrame:
    """Read a delimited table with every cell as a string ('' for empty); errors name the file.

    Bytes that are not UTF-8 become U+FFFD; ingest then warns about (or, for ids and labels,
    skips) each row holding one, naming it (`values.is_undecodable`)."""
    path = Path(path)
    _check_table_path(path)
    try:
        frame = pd.read_csv(path, **_csv_options(sep))
    except pd.errors.EmptyDataError:
        raise SlimpError(f"{path}: the table is empty") from None
    except _PARSE_ERRORS as exc:
        raise _parse_error(path, exc) from None
    return _clean(frame)


def csv_table(
    path: Path, locate, notes=None, *, sep: str | None = ",", chunk_rows: int | None = None
) -> SourceTable:
    """A SourceTable read from a CSV in chunks of `chunk_rows` rows, as `read_csv_strings`
    would read it whole (same cells, same errors). The header is read now, the rows lazily."""
    path = Path(path)
    _check_table_path(path)
    try:
        header = pd.read_csv(path, nrows=0, **_csv_options(sep))
    except pd.errors.EmptyDataError:
        raise SlimpError(f"{path}: the table is empty") from None
    except _PARSE_ERRORS as exc:
        raise _parse_error(path, exc) from None

    def reader() -> Iterator[pd.DataFrame]:
        try:
            rows = chunk_rows or CHUNK_ROWS
            with pd.read_csv(path, chunksize=rows, **_csv_options(sep)) as chunks:
                for chunk in chunks:
                    yield _clean(chunk)
        except pd.errors.EmptyDataError:
            return
        except _PARSE_ERRORS as exc:
            raise _parse_error(path, exc) from None

    return SourceTable(
        path=path,
        locate=locate,
        notes=notes or [],
        reader=reader,
        columns=[str(c).strip() for c in header.columns],
    )


def find_table(source: Path, names: tuple[str, ...], *, pattern: str = "*.csv") -> Path:
    """The table of a release: `source` itself if a file, else the first of `names` under it.

    Falls back to the only file matching `pattern` directly in `source`; anything else is an
    error naming what was looked for.
    """
    source = Path(source)
    if not source.exists():
        raise SlimpError(f"{source}: no such file or folder")
    if source.is_file():
        return source
    for name in names:
        for candidate in (source / name, *sorted(source.glob(f"*/{name}"))):
            if candidate.is_file():
                return candidate
    matches = sorted(p for p in source.glob(pattern) if p.is_file())
    if len(matches) == 1:
        return matches[0]
    raise SlimpError(
        f"{source}: metadata table not found (looked for {', '.join(names)}"
        + (f"; several {pattern} files: {', '.join(p.name for p in matches)}" if matches else "")
        + ")"
    )


def folder_locator(
    root: Path, *, subdirs: tuple[str, ...] = ()
) -> Callable[[str, str], ImageRef | None]:
    """A `locate` function searching image files under `root` (see ImageLocator)."""
    locator = ImageLocator(root, subdirs=subdirs)

    def locate(column: str, cell: str) -> ImageRef | None:
        path = locator.find(cell)
        return ImageRef(str(path)) if path is not None else None

    return locate


def table_from_frame(frame: pd.DataFrame, path: Path, locate, notes=None) -> SourceTable:
    """A SourceTable whose rows are numbered 1.. in file order."""
    frame = frame.reset_index(drop=True)
    return SourceTable(frame=frame, path=path, locate=locate, notes=notes or [])
