"""Where things are, and how files are written so that a partial file never looks complete."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; the object is all that is used
    from importlib.resources.abc import Traversable

REPO_ROOT = Path(__file__).resolve().parent.parent


def builtin_schemas() -> Traversable:
    """The built-in dataset schemas: package data (`slimp_cli/schemas/*.json`), read through
    importlib.resources, so a wheel or a non-editable install finds them too."""
    return resources.files("slimp_cli").joinpath("schemas")


def shared_data_dir() -> Path:
    """Real data for tests and benchmarks: $SLIMP_SHARED_DATA, default ../shared/data."""
    env = os.environ.get("SLIMP_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def tmp_name(path: Path) -> Path:
    """The temporary sibling a file is written under before its atomic rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; rename it onto `path` only if the block finishes."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def prepare_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Create the output folder `path` (and its parents) before any computing starts, so a long
    command never fails at its very end for want of a folder; SlimpError naming `option` when
    it cannot be created or written."""
    from .errors import SlimpError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SlimpError(f"{option} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlimpError(f"{option} {path}: cannot create the folder ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SlimpError(f"{option} {path}: the folder is not writable")
    return path


def prepare_output_file(path: str | os.PathLike, option: str) -> Path:
    """Create (or check) the folder of the output file `path` before any computing starts."""
    from .errors import SlimpError

    path = Path(path)
    if path.is_dir():
        raise SlimpError(f"{option} {path}: is a folder; give a file name")
    prepare_output_dir(path.parent, option)
    return path


def read_json(path: str | os.PathLike):
    """Parse a JSON file; SlimpError naming the file and the line when it is not valid JSON."""
    from .errors import SlimpError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SlimpError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError as exc:
        raise SlimpError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    except OSError as exc:  # a folder, no permission, vanished...
        raise SlimpError(f"{path}: cannot read ({exc.strerror or exc})") from None


@contextlib.contextmanager
def atomic_text(path: str | os.PathLike) -> Iterator[TextIO]:
    """A UTF-8 text handle on a temporary file renamed onto `path` when the block finishes;
    SlimpError naming the file when it cannot be written (missing or read-only folder, a file
    where a folder should be, full disk)."""
    from .errors import SlimpError

    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            yield handle
    except OSError as exc:
        raise SlimpError(f"{path}: cannot write ({exc.strerror or exc})") from None


def write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> None:
    """Write JSON atomically (sorted keys: byte-identical output for identical input).

    Streamed to the file piece by piece (`json.dump`): the same bytes as `json.dumps`, without
    the whole text and its pieces in memory (an index.json of 100,000 patients)."""
    with atomic_text(path) as handle:
        json.dump(obj, handle, indent=indent, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically (see `atomic_text`)."""
    with atomic_text(path) as handle:
        handle.write(text)


def json_safe(obj):
    """Plain JSON containers, recursively: NaN/inf -> None (strict JSON has no NaN), numpy
    scalars -> Python numbers, tuples -> lists. Configs stored in checkpoints must be plain."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy / torch scalars
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, streamed (checkpoints, manifests, shards: the one definition)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
