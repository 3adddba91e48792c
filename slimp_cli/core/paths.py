"""Where things are, and how files are written: one writer per output, under an unpredictable
temporary name, renamed into place only when complete, a full disk reported in one line."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import sys
import tempfile
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


# --------------------------------------------------------------------------- writing outputs
#
# Every file or folder slimp writes goes through `AtomicOutput` (and its forms `atomic_path`,
# `atomic_text`, `write_json`, `write_text`):
# - one writer per output: an advisory lock (`fcntl.flock`) on `.NAME.slimp-lock` beside it,
#   holding the writer's pid; a second slimp process writing the same output gets one line
#   naming that pid. The kernel drops the lock however the holder ends (kill -9 included).
# - the output is written under an unpredictable temporary name in its own folder,
#   `.NAME.tmp-PID-RANDOM` (`tempfile.mkstemp`/`mkdtemp`: O_EXCL, a planted symlink is never
#   followed), and temporaries whose process is gone are removed by the next writer there.
# - it is renamed into place only when complete; without `overwrite` by a rename that fails if
#   the output appeared meanwhile (renameat2 RENAME_NOREPLACE, else a hard link); a folder
#   replaced with `overwrite` is swapped in (RENAME_EXCHANGE): the old one stays whole until
#   the new one is.
# - a full disk (ENOSPC, EFBIG of a file-size limit, EDQUOT) is one line, `no space left on
#   DEVICE writing PATH`, and the temporary is removed.

NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
LOCK_SUFFIX = ".slimp-lock"
# `.NAME.tmp-PID-RANDOM` (and `.NAME.tmp-PID` of older slimp versions)
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?:-[a-z0-9_]+)?$")
# scratch files of a process, not of one output: `.slimp-KIND-PID-RANDOM[.EXT]`
_SCRATCH = re.compile(r"^\.slimp-[a-z]+-(?P<pid>\d+)-[a-z0-9_]+(?:\.[a-z]+)?$")
_NAME_MAX = 200  # of the output's name inside a temporary name (NAME_MAX is 255 bytes)


def file_system_of(path: str | os.PathLike) -> str:
    """`SOURCE (MOUNT POINT)` of the file system `path` is (or would be) on, for messages."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    mount = os.path.realpath(p)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    source = None
    with contextlib.suppress(OSError):
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:  # the last mount on a mount point is the visible one
                parts = line.split()
                if len(parts) < 2:
                    continue
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[1])
                if point == mount:
                    source = parts[0]
    return f"{source} ({mount})" if source and source != mount else mount


def write_error(exc: OSError, path: str | os.PathLike):
    """The one-line SlimpError of an OSError met while writing `path`."""
    from .errors import SlimpError

    path = Path(os.fsdecode(path))
    if (m := _TEMP.match(path.name)) is not None:  # a temporary: the output it becomes
        path = path.with_name(m["name"])
    if exc.errno in NO_SPACE:
        return SlimpError(f"no space left on {file_system_of(path)} writing {path}")
    reason = " ".join(str(exc.strerror or exc or type(exc).__name__).split())  # HDF5: newlines
    return SlimpError(f"{path}: cannot write ({reason})")


# ---- one writer per output -----------------------------------------------------------------

_HELD: set[str] = set()  # outputs whose lock this process holds
_COVERED: set[str] = set()  # folders whose contents a lock held by this process covers
_HOLDS = contextlib.ExitStack()  # `hold_output` locks, released by `release_outputs`


def _key(path: Path) -> str:
    return os.path.join(os.path.realpath(path.parent), path.name)


def lock_file_of(path: str | os.PathLike) -> Path:
    """The lock file of the output `path`: `.NAME.slimp-lock` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name[:_NAME_MAX]}{LOCK_SUFFIX}")


@contextlib.contextmanager
def output_lock(
    path: str | os.PathLike,
    *,
    contents: bool = False,
    lock_file: Path | None = None,
    busy=None,
) -> Iterator[Path]:
    """Hold the one-writer lock of the output `path` (a file or folder) for the block.

    Re-entrant in this process; `contents`: the lock also covers the files inside the folder
    `path` (their own writes take no lock of their own). `lock_file` defaults to
    `lock_file_of(path)`. A second process gets a SlimpError naming this one's pid (`busy(pid)`
    makes another one)."""
    from .errors import SlimpError

    path = Path(path)
    key, inside = _key(path), os.path.realpath(path)
    if key in _HELD or os.path.dirname(key) in _COVERED:
        added = contents and inside not in _COVERED
        if added:
            _COVERED.add(inside)
        try:
            yield path
        finally:
            if added:
                _COVERED.discard(inside)
        return
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform (Windows): nothing to hold
        yield path
        return
    lock = lock_file if lock_file is not None else lock_file_of(path)
    fd = acquire_lock(
        lock,
        fcntl,
        output=path,
        busy=busy
        or (
            lambda pid: SlimpError(
                f"{path} is being written by another slimp process (pid {pid}); wait for it "
                "to finish or choose another output"
            )
        ),
    )
    _HELD.add(key)
    if contents:
        _COVERED.add(inside)
    try:
        yield path
    finally:
        _HELD.discard(key)
        _COVERED.discard(inside)
        release_lock(lock, fd)


def hold_output(path: str | os.PathLike, *, contents: bool = False) -> None:
    """`output_lock` held until `release_outputs()` (the CLI calls it as it exits): for an
    output a command names up front and writes at its very end (probe --json, --plots)."""
    _HOLDS.enter_context(output_lock(path, contents=contents))


def release_outputs() -> None:
    _HOLDS.close()


def acquire_lock(path: Path, fcntl, *, busy, output: Path | None = None) -> int:
    """Open and flock `path` (never through a symlink), write this pid into it; the descriptor.
    `busy(pid)` is the exception raised when another process holds it; a lock file that
    cannot be created is reported as `output` (the file or folder it guards) not written."""
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise write_error(exc, output if output is not None else path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise busy(holder) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # a full disk: the lock holds, the pid is unread
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the previous holder removed the file we locked: take the new one
    from .errors import SlimpError

    raise SlimpError(f"{path.parent}: cannot take the lock {path.name}")


def release_lock(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it (a waiter that opened it sees it is gone by
    its inode and starts over on a new one), then release it."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


def _read_holder(fd: int) -> str:
    """The pid the holder wrote (it writes right after locking: wait briefly for it)."""
    import time

    for _ in range(20):
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


# ---- temporaries -----------------------------------------------------------------------------

_NOTED: set[str] = set()  # folders whose stale temporaries were reported


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def clean_stale(
    folder: str | os.PathLike, *, name: str | None = None, scratch_only: bool = False
) -> list[str]:
    """Remove the temporaries in `folder` whose process is gone (killed, crashed, out of
    power): those of the output `name`; with `name` None every slimp temporary and scratch
    file there (`scratch_only`: the scratch files alone). Says so once per folder on stderr;
    returns the names removed."""
    import shutil

    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.endswith(LOCK_SUFFIX) and not scratch_only:
            if _remove_stale_lock(Path(entry.path)):
                removed.append(entry.name)
            continue
        m = None if scratch_only else _TEMP.match(entry.name)
        if m is not None and name is not None and m["name"] != name[:_NAME_MAX]:
            continue
        if m is None and (name is not None or (m := _SCRATCH.match(entry.name)) is None):
            continue
        if pid_alive(int(m["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    key = os.path.realpath(folder)
    if removed and key not in _NOTED:
        _NOTED.add(key)
        shown = ", ".join(sorted(removed)[:3]) + (", ..." if len(removed) > 3 else "")
        print(
            f"note: removed {len(removed)} temporary file(s) left in {folder} by slimp "
            f"processes that no longer run ({shown})",
            file=sys.stderr,
        )
    return removed


def _remove_stale_lock(path: Path) -> bool:
    """Remove a lock file left by a killed writer (its pid is gone and nobody holds it)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return False
    if not text.isdigit() or pid_alive(int(text)):
        return False  # being written right now, or its writer still runs
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    release_lock(path, fd)  # unlinked while held: a process that opened it starts over
    return True


_UMASK: list[int] = []


def _umask() -> int:
    if not _UMASK:
        old = os.umask(0o022)
        os.umask(old)
        _UMASK.append(old)
    return _UMASK[0]


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:_NAME_MAX]}.tmp-{os.getpid()}-"


def temp_file(path: str | os.PathLike) -> tuple[int, Path]:
    """A new empty temporary file for the output `path`, in its folder: `.NAME.tmp-PID-RANDOM`,
    created with O_EXCL | O_NOFOLLOW (a planted file or symlink is never used), permissions as
    a plain `open()` gives. Returns (open descriptor, its path)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private
    return fd, Path(name)


def temp_dir(path: str | os.PathLike) -> Path:
    """A new empty temporary folder for the output folder `path`, beside it (`mkdtemp`)."""
    path = Path(path)
    name = tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent)
    os.chmod(name, 0o777 & ~_umask())
    return Path(name)


def scratch_file(folder: str | os.PathLike, kind: str, suffix: str = "") -> tuple[int, str]:
    """A private scratch file `.slimp-KIND-PID-RANDOM.SUFFIX` in `folder` (mkstemp), removed
    by its user; left behind by a killed process, the next writer there removes it."""
    return tempfile.mkstemp(prefix=f".slimp-{kind}-{os.getpid()}-", suffix=suffix, dir=folder)


# ---- publishing ------------------------------------------------------------------------------

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_RENAMEAT2: list = []


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2: True when done, False when this system or file system cannot."""
    if not _RENAMEAT2:
        fn = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
                fn.argtypes.append(ctypes.c_uint)
                fn.restype = ctypes.c_int
        _RENAMEAT2.append(fn)
    fn = _RENAMEAT2[0]
    if fn is None:
        return False
    import ctypes

    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename `src` to `dst`; FileExistsError, and nothing changed, when `dst` exists: checked
    by the kernel in the rename itself (or by a hard link, which fails on an existing name)."""
    src, dst = Path(src), Path(dst)
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if not src.is_dir() or src.is_symlink():
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:  # no hard links on this file system: check, then rename
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool) -> None:
    """Move the finished temporary `tmp` (a file or folder) to `path`.

    Without `overwrite`, FileExistsError when `path` appeared meanwhile (an empty folder is no
    output: it is replaced). With it, a file is replaced atomically and a folder swapped in, so
    a reader sees the old or the new one, never a mix and never none."""
    import shutil

    tmp, path = Path(tmp), Path(path)
    if tmp.is_dir() and not tmp.is_symlink():
        if overwrite and path.is_dir() and not path.is_symlink():
            if not _renameat2(tmp, path, _RENAME_EXCHANGE):
                old = temp_dir(path)
                os.rename(path, old / "old")
                os.rename(tmp, path)
                tmp = old
            shutil.rmtree(tmp)  # the old folder, now under the temporary name
            return
        with contextlib.suppress(OSError):
            path.rmdir()  # only an empty folder goes
    if overwrite:
        os.replace(tmp, path)
    else:
        rename_noreplace(tmp, path)


def _remove(path: Path) -> None:
    import shutil

    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class AtomicOutput:
    """An output written under a temporary name and renamed into place when complete.

    `start()` takes the output's one-writer lock (unless `lock=False`), removes temporaries of
    dead processes beside it and creates the temporary (a folder with `folder=True`); the
    caller writes it; `commit()` renames it into place (`publish`), `abort()` removes it. Every
    OSError becomes one line (`write_error`), and nothing is published after a Ctrl-C that a
    finaliser swallowed. As a context manager: `with AtomicOutput(path) as tmp: ...`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = True,
        folder: bool = False,
        lock: bool = True,
        check=None,
    ) -> None:
        self.path = Path(path)
        self.overwrite, self.folder, self.lock = overwrite, folder, lock
        self.check = check if check is not None else self._refuse_existing
        self.tmp: Path | None = None
        self._stack = contextlib.ExitStack()

    def _refuse_existing(self) -> None:
        """Without `overwrite`: SlimpError when the output exists (an empty folder aside)."""
        from .errors import SlimpError

        path = self.path
        if self.overwrite or not os.path.lexists(path):
            return
        if self.folder and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            return
        raise SlimpError(f"{path} already exists; add --overwrite to replace it")

    def start(self) -> Path:
        """Lock, check (`check()`, under the lock: by default an existing output is refused
        without `overwrite`), clean stale temporaries, create the temporary; its path."""
        try:
            if self.lock:
                self._stack.enter_context(output_lock(self.path))
            self.check()
            clean_stale(self.path.parent, name=self.path.name)
            if self.folder:
                self.tmp = temp_dir(self.path)
            else:
                fd, self.tmp = temp_file(self.path)
                os.close(fd)
        except BaseException as exc:
            self._stack.close()
            if isinstance(exc, OSError):
                raise self.error(exc) from None
            raise
        return self.tmp

    def commit(self) -> Path:
        from .errors import SlimpError, raise_if_interrupted

        try:
            raise_if_interrupted()
            publish(self.tmp, self.path, overwrite=self.overwrite)
        except FileExistsError:
            raise SlimpError(
                f"{self.path} appeared while this command ran (another process wrote it); it "
                "was kept: add --overwrite to replace it, or choose another output"
            ) from None
        except OSError as exc:
            raise self.error(exc) from None
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Remove the temporary (if still there) and release the lock."""
        try:
            if self.tmp is not None:
                _remove(self.tmp)
        finally:
            self._stack.close()

    def error(self, exc: OSError):
        """The one line of an OSError met writing this output: its temporary's name (or a
        file inside the temporary folder) shown as the final one."""
        name = exc.filename
        if isinstance(name, (str, bytes, os.PathLike)) and self.tmp is not None:
            name = Path(os.fsdecode(name))
            if name == self.tmp or self.tmp in name.parents:
                return write_error(exc, self.path / name.relative_to(self.tmp))
        return write_error(exc, self.path)

    def owns(self, exc: BaseException) -> bool:
        """Whether `exc` is an OSError of writing this output (not of reading some input)."""
        if not isinstance(exc, OSError):
            return False
        if exc.errno in NO_SPACE or exc.filename is None or self.tmp is None:
            return True
        name = Path(os.fsdecode(exc.filename))
        return name == self.tmp or self.tmp in name.parents or name == self.path

    def __enter__(self) -> Path:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        self.abort()
        if self.owns(exc):
            raise self.error(exc) from None


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, overwrite: bool = True, lock: bool = True
) -> Iterator[Path]:
    """Yield a temporary path (an empty file); rename it onto `path` only if the block
    finishes (see `AtomicOutput`)."""
    with AtomicOutput(path, overwrite=overwrite, lock=lock) as tmp:
        yield tmp


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
def atomic_text(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[TextIO]:
    """A UTF-8 text handle on a temporary file renamed onto `path` when the block finishes;
    SlimpError naming the file when it cannot be written (missing or read-only folder, a file
    where a folder should be, full disk: `write_error`)."""
    path = Path(path)
    try:
        with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            yield fh
    except OSError as exc:  # creating the temporary in a missing or read-only folder...
        raise write_error(exc, path) from None


def write_json(path: str | os.PathLike, obj, *, indent: int = 2, overwrite: bool = True) -> None:
    """Write JSON atomically (sorted keys: byte-identical output for identical input).

    Streamed to the file piece by piece (`json.dump`): the same bytes as `json.dumps`, without
    the whole text and its pieces in memory (an index.json of 100,000 patients)."""
    with atomic_text(path, overwrite=overwrite) as handle:
        json.dump(obj, handle, indent=indent, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> None:
    """Write UTF-8 text atomically (see `atomic_text`)."""
    with atomic_text(path, overwrite=overwrite) as handle:
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
