"""What every dataset adapter produces: a table of strings plus a way to find each image.

An adapter knows one release's file layout (where the table is, how images are named); it
does not type values, check roles or write anything: `slimp_cli.ingest` does that the same way
for every dataset, driven by the dataset schema.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ...errors import SlimpError
from ..images import ImageLocator, ImageRef


@dataclass(kw_only=True)
class SourceTable:
    """One dataset as read from disk.

    frame: every cell a string ("" = empty), column names stripped; one row per image.
    path: the table file (named in errors and in the manifest).
    rows: the 1-based data-row number in that file of each frame row (header not counted).
    locate: (column, cell) -> ImageRef or None when no file exists for the reference.
    notes: facts about the read worth recording in the manifest (e.g. ignored legend lines).
    """

    frame: pd.DataFrame
    path: Path
    rows: list[int]
    locate: Callable[[str, str], ImageRef | None]
    notes: list[str] = field(default_factory=list)


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


def read_csv_strings(path: Path, *, sep: str | None = ",") -> pd.DataFrame:
    """Read a delimited table with every cell as a string ('' for empty); errors name the file.

    Bytes that are not UTF-8 become U+FFFD; ingest then warns about (or, for ids and labels,
    skips) each row holding one, naming it (`values.is_undecodable`)."""
    path = Path(path)
    if not path.exists():
        raise SlimpError(f"{path}: no such file")
    if not path.is_file():
        raise SlimpError(f"{path}: is a folder, not a table (give the CSV file)")
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skipinitialspace=True,
            encoding_errors="replace",
            engine="python" if sep is None else "c",
        )
    except pd.errors.EmptyDataError:
        raise SlimpError(f"{path}: the table is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SlimpError(f"{path}: cannot parse the table ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.map(lambda v: v.strip() if isinstance(v, str) else ("" if v is None else str(v)))


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
    return SourceTable(
        frame=frame,
        path=path,
        rows=list(range(1, len(frame) + 1)),
        locate=locate,
        notes=notes or [],
    )
