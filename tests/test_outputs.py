"""How every output is written (issue 21, in-process): one writer per output across processes,
the refusal of an existing output repeated at the rename, unpredictable temporaries that never
follow a planted symlink, stale temporaries of dead processes cleaned once, a folder swapped in
whole, a full disk as one line, nothing published after a swallowed Ctrl-C, stores validated on
open, the decompression-bomb limit, a run dir that never completed a step.

The same behaviours through the installed `slimp`: tests/test_full_disk.py,
tests/test_concurrent_writers.py, tests/test_interrupt.py.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from slimp_cli.core import errors, paths
from slimp_cli.core.errors import SlimpError
from slimp_cli.core.paths import AtomicOutput, clean_stale, output_lock, publish, write_json
from slimp_cli.features.store import FeatureStore, FeatureStoreWriter


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".slimp-" in p.name)


class Holder:
    """Another process holding the one-writer lock of `path` (paths.output_lock) until stop()."""

    CODE = (
        "import sys\n"
        "from slimp_cli.core.paths import output_lock\n"
        "with output_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )

    def __init__(self, path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout.readline().strip() == "held"

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "p.json"
    holder = Holder(out)
    try:
        with pytest.raises(SlimpError, match=rf"being written by another slimp process \(pid {holder.proc.pid}\)"):  # fmt: skip
            write_json(out, {"a": 1})
        assert not out.exists() and _temporaries(tmp_path) == [".p.json.slimp-lock"]
    finally:
        holder.stop()
    write_json(out, {"a": 2})  # released by the holder's exit: free again
    assert json.loads(out.read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]  # lock file removed
    with output_lock(out), output_lock(out):  # re-entrant within one process
        write_json(out, {"a": 3})


def test_every_writer_takes_the_lock_of_its_output(tmp_path):
    """Store writers (embed, extrapolate) and export: refused while another process holds the
    output, before anything is written."""
    from slimp_cli.features.export import export_run
    from slimp_cli.features.store import PseudoWriter

    store = _store(tmp_path / "s.h5")
    before = store.read_bytes()
    for out, write in [
        (tmp_path / "f.h5", lambda out: FeatureStoreWriter(
            out, n=1, dims={"image": 2}, config={}, schema=None, classes=["a"])),
        (store, lambda out: PseudoWriter(
            out, "il", n=40, widths={"lesion": 4}, attrs={}).__enter__()),
        (tmp_path / "DIR", lambda out: export_run(tmp_path / "no-run", out)),
    ]:  # fmt: skip
        holder = Holder(out)
        try:
            with pytest.raises(SlimpError, match=rf"\(pid {holder.proc.pid}\)"):
                write(out)
        finally:
            holder.stop()
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_the_refusal_of_an_existing_output_is_repeated_at_the_rename(tmp_path):
    """Two writers that both passed the early check: the one that renames last is refused and
    the first one's output is kept (renameat2 NOREPLACE / link), never silently replaced."""
    out = tmp_path / "f.h5"
    w = FeatureStoreWriter(out, n=1, dims={"image": 2}, config={}, schema=None, classes=["a"])
    w.append(
        lesion_id=["x"],
        patient_id=["p"],
        label=[0],
        malignant=[0],
        features={"image": np.ones((1, 2), np.float32)},
    )
    out.write_bytes(b"the other writer's store")  # appeared while this one computed
    with pytest.raises(SlimpError, match="appeared while this command ran"):
        w.close()
    assert out.read_bytes() == b"the other writer's store"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]  # no temporary, no lock


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "link"])
def test_publish_without_overwrite_never_replaces(tmp_path, monkeypatch, fallback):
    if fallback:  # file systems / kernels without renameat2: a hard link refuses the same way
        monkeypatch.setattr(paths, "_renameat2", lambda *a: False)
    tmp, out = tmp_path / "new", tmp_path / "out"
    tmp.write_text("new")
    out.write_text("old")
    with pytest.raises(FileExistsError):
        publish(tmp, out, overwrite=False)
    assert out.read_text() == "old" and tmp.read_text() == "new"
    publish(tmp, out, overwrite=True)
    assert out.read_text() == "new" and not tmp.exists()
    tmp.write_text("newer")
    (tmp_path / "free").unlink(missing_ok=True)
    publish(tmp, tmp_path / "free", overwrite=False)
    assert (tmp_path / "free").read_text() == "newer"


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "rename-aside"])
def test_a_folder_is_swapped_in_whole(tmp_path, monkeypatch, fallback):
    """export --overwrite: DIR holds the old export until the new one is complete, then the
    new one; a failure after the swap (here: removing the old one) leaves the new one whole."""
    if fallback:
        monkeypatch.setattr(paths, "_renameat2", lambda *a: False)
    out = tmp_path / "DIR"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    new = paths.temp_dir(out)
    (new / "model.safetensors").write_text("new")
    (new / "README.md").write_text("card")
    import shutil

    def killed(path, *a, **k):
        raise KeyboardInterrupt  # the process dies right after the swap

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        publish(new, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.safetensors"]
    assert (out / "model.safetensors").read_text() == "new"
    monkeypatch.undo()
    assert clean_stale(tmp_path, name="DIR") == []  # ours (this pid): left alone
    empty = tmp_path / "EMPTY"
    empty.mkdir()
    other = paths.temp_dir(empty)
    (other / "f").write_text("x")
    publish(other, empty, overwrite=False)  # an empty folder is no output: replaced
    assert (empty / "f").read_text() == "x"


def test_temporaries_are_unpredictable_and_never_follow_a_planted_symlink(tmp_path):
    """The issue's attack: symlinks planted at `.p.json.tmp-<pid>` for the next pids."""
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    out = tmp_path / "p.json"
    for pid in range(os.getpid() - 20, os.getpid() + 200):
        (tmp_path / f".p.json.tmp-{pid}").symlink_to(victim)
    write_json(out, {"ok": True})
    assert not out.is_symlink() and json.loads(out.read_text()) == {"ok": True}
    assert victim.read_text() == "do not touch"
    fd, name = paths.temp_file(out)
    os.close(fd)
    assert name.name.startswith(f".p.json.tmp-{os.getpid()}-") and len(name.name) > len(
        f".p.json.tmp-{os.getpid()}-"
    )
    assert oct(name.stat().st_mode & 0o777) == oct(0o666 & ~paths._umask())  # not mkstemp's 0600
    name.unlink()


def test_stale_temporaries_of_dead_processes_are_removed_once(tmp_path, capsys):
    dead, alive = _dead_pid(), os.getpid()
    stale = [f".f.h5.tmp-{dead}-a1b2c3d4", f".f.h5.tmp-{dead}", f".slimp-ingest-{dead}-x9y8z7w6.db"]
    kept = [f".f.h5.tmp-{alive}-zzzzzzzz", f".g.h5.tmp-{dead}-q1q1q1q1", "notes.txt"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    (tmp_path / ".h.h5.slimp-lock").write_text(f"{dead}\n")  # a killed embed's lock file
    (tmp_path / ".i.h5.slimp-lock").write_text(f"{alive}\n")  # a running one's
    kept.append(".i.h5.slimp-lock")
    stale.append(".h.h5.slimp-lock")
    (tmp_path / f".DIR.tmp-{dead}-abcdefgh").mkdir()  # an export's temporary folder
    (tmp_path / f".DIR.tmp-{dead}-abcdefgh" / "model.safetensors").write_text("x")
    assert sorted(clean_stale(tmp_path, name="f.h5")) == sorted([*stale[:2], stale[3]])
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "removed 3 temporary file(s)" in note and str(dead) in note
    assert sorted(clean_stale(tmp_path, name="DIR")) == [f".DIR.tmp-{dead}-abcdefgh"]
    assert capsys.readouterr().err == ""  # said once per folder
    assert clean_stale(tmp_path, scratch_only=True) == [stale[2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    # the next writer of f.h5 does it on its own
    (tmp_path / f".f.h5.tmp-{dead}-deadbeef").write_text("x")
    with AtomicOutput(tmp_path / "f.h5") as tmp:
        tmp.write_text("store")
    assert (tmp_path / "f.h5").read_text() == "store"
    assert not (tmp_path / f".f.h5.tmp-{dead}-deadbeef").exists()


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "sub" / "p.json"
    out.parent.mkdir()
    for code in (errno.ENOSPC, errno.EFBIG):
        with pytest.raises(SlimpError) as info:
            with paths.atomic_text(out) as fh:
                fh.write("x")
                raise OSError(code, os.strerror(code))
        message = str(info.value)
        assert message.startswith("no space left on ") and message.endswith(f" writing {out}")
        assert "\n" not in message and ".tmp-" not in message
        assert list(out.parent.iterdir()) == []
    # the device is named: the file system's source and mount point
    assert paths.file_system_of(out).endswith(")") or paths.file_system_of(out).startswith("/")
    other = paths.write_error(OSError(errno.EACCES, "Permission denied"), out)
    assert str(other) == f"{out}: cannot write (Permission denied)"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_nothing_is_published_after_a_swallowed_ctrl_c(tmp_path):
    """A KeyboardInterrupt raised inside a finaliser is printed and swallowed by Python; the
    CLI's handler records it, and writers refuse to go on or to rename their output."""
    import weakref

    class Thing:
        pass

    thing = Thing()
    weakref.finalize(thing, errors._on_sigint, 2, None)  # the interrupt lands in a finaliser
    try:
        del thing  # "Exception ignored in ...: KeyboardInterrupt": swallowed
        assert errors.interrupted()
        out = tmp_path / "f.h5"
        w = FeatureStoreWriter(out, n=1, dims={"image": 2}, config={}, schema=None, classes=["a"])
        with pytest.raises(KeyboardInterrupt):
            w.append(
                lesion_id=["x"],
                patient_id=["p"],
                label=[0],
                malignant=[0],
                features={"image": np.ones((1, 2), np.float32)},
            )
        w.abort()
        with pytest.raises(KeyboardInterrupt):
            write_json(tmp_path / "p.json", {})
        assert list(tmp_path.iterdir()) == []
    finally:
        errors._INTERRUPT["signal"] = None


def test_main_exits_130_after_a_swallowed_ctrl_c(run_cli, tmp_path):
    """A command that would succeed: 130 and nothing written."""
    (tmp_path / "t.csv").write_text("patient_id,age\np1,3\n")
    out = tmp_path / "schema.json"
    assert run_cli("schema", "infer", tmp_path / "t.csv", "--out", out).exit_code == 0
    out.unlink()
    errors._INTERRUPT["signal"] = "SIGINT"
    try:
        res = run_cli("schema", "infer", tmp_path / "t.csv", "--out", out)
    finally:
        errors._INTERRUPT["signal"] = None
    assert res.exit_code == 130 and res.stderr.strip() == "interrupted", res
    assert not out.exists()


# ------------------------------------------------------------------------------ stores


def _store(path: Path, n: int = 40) -> Path:
    from conftest import _write_store

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 4)).astype(np.float32)
    return _write_store(
        path,
        features={"image": feats, "lesion": feats[:, ::-1].copy()},
        patient_id=np.arange(n) // 2,
        label=np.arange(n) % 2,
        raw={"lesion": (rng.normal(size=(n, 2)).astype(np.float32), ["a", "b"], ["a", "b"])},
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f["features/image"].resize(39, axis=0),
         "features/image has 39 rows but the store's index (lesion_id) has 40"),
        (lambda f: f["label"].resize(41, axis=0), "label has 41 rows but the store's index"),
        (lambda f: f["raw/lesion"].attrs.__setitem__("columns", json.dumps(["a", "b", "c"])),
         "raw/lesion has shape (40, 2), expected (40, 3)"),
        (lambda f: f.attrs.__setitem__("widths", json.dumps({"features/lesion": 5})),
         "features/lesion has shape (40, 4), expected (40, 5)"),
        (lambda f: f.create_dataset("pseudo/il/lesion", data=np.zeros((40, 3), np.float32)),
         "pseudo/il/lesion has shape (40, 3), expected (40, 4)"),
    ],
    ids=["short-features", "long-labels", "raw-columns", "recorded-width", "pseudo-width"],
)  # fmt: skip
def test_a_damaged_store_is_refused_on_open(tmp_path, damage, message):
    path = _store(tmp_path / "s.h5")
    with FeatureStore.open(path) as st:
        assert st.n == 40 and json.loads(st.f.attrs["widths"])["features/image"] == 4
    with h5py.File(path, "a") as f:
        damage(f)
    with pytest.raises(SlimpError) as info:
        FeatureStore.open(path)
    assert message in str(info.value) and "re-run slimp embed" in str(info.value)


# ------------------------------------------------------------------------------ images


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (no pixel data: a decompression bomb's
    first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_the_pixel_limit_everywhere_an_image_is_opened(tmp_path):
    import io

    from PIL import Image

    from slimp_cli.data.image_io import ImageTooLarge, max_image_pixels, set_max_image_pixels
    from slimp_cli.data.transforms import Preprocess
    from slimp_cli.ingest.images import process_image

    bomb = _png_header(100_000, 100_000)
    pre = Preprocess(img_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ImageTooLarge, match=r"^x.png: image too large: 100000 x 100000 pixels \(limit 89,478,485;"):  # fmt: skip
        pre.load_uint8(bomb, where="x.png")  # embed and encode decode through this
    buf = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buf, format="PNG")
    small = buf.getvalue()
    default = max_image_pixels()
    try:
        set_max_image_pixels(700)  # --max-image-pixels 700
        with pytest.raises(ImageTooLarge, match=r"image too large: 32 x 24 pixels \(limit 700;"):
            pre.load_uint8(small, where="y.png")
        set_max_image_pixels(0)  # no limit: PIL decodes (and finds no pixel data)
        with pytest.raises(SlimpError, match="cannot decode image"):
            pre.load_uint8(bomb, where="x.png")
        assert pre.load_uint8(small).shape == (3, 16, 16)
    finally:
        set_max_image_pixels(default)
    # ingest's pool workers: the limit travels with each job
    from slimp_cli.ingest.images import ImageRef

    (tmp_path / "small.png").write_bytes(small)
    ref = ImageRef(path=str(tmp_path / "small.png"))
    assert process_image((ref, 16, 700)) == (
        None,
        "image too large: 32 x 24 pixels (limit 700; raise it with --max-image-pixels N, "
        "0 = no limit)",
    )
    jpeg, reason = process_image((ref, 16, None))
    assert reason is None and jpeg[:2] == b"\xff\xd8"


def test_ingest_skips_a_bomb_with_the_reason(synth_dir, tmp_path):
    import shutil

    from slimp_cli.ingest import ingest

    cohort = shutil.copytree(synth_dir, tmp_path / "cohort")
    victim = sorted((cohort / "images").iterdir())[0]
    victim.write_bytes(_png_header(50_000, 40_000))
    out = tmp_path / "out"
    result = ingest("synth", cohort, out, image_size=32, workers=1)
    reasons = [s["reason"] for s in result.manifest["skipped"]]
    assert reasons == [
        "image too large: 50000 x 40000 pixels (limit 89,478,485; raise it with "
        "--max-image-pixels N, 0 = no limit)"
    ]
    with pytest.raises(SlimpError, match="--strict: row .*image too large: 50000 x 40000"):
        ingest("synth", cohort, tmp_path / "strict", image_size=32, workers=1, strict=True)
    assert not (tmp_path / "strict").exists()  # a failed ingest leaves no folder behind
    # --max-image-pixels reaches the pool's workers: every image is above 100 pixels
    with pytest.raises(SlimpError, match=r"no usable images .*image too large: .*\(limit 100;"):
        ingest("synth", cohort, tmp_path / "tiny", image_size=32, workers=2, max_image_pixels=100)


# ------------------------------------------------------------------------------ ingest, runs


def test_ingest_is_one_writer_per_out_and_cleans_what_a_killed_ingest_left(synth_dir, tmp_path):
    from slimp_cli.ingest import ingest

    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    debris = [f".shard-000000.tar.tmp-{dead}-a1a1a1a1", f".slimp-ingest-{dead}-b2b2b2b2.db"]
    for name in debris:
        (out / name).write_text("x")
    holder = Holder(out)
    try:
        with pytest.raises(SlimpError, match=rf"{out} is being written by another slimp process \(pid {holder.proc.pid}\)"):  # fmt: skip
            ingest("synth", synth_dir, out, image_size=32, workers=1)
    finally:
        holder.stop()
    ingest("synth", synth_dir, out, image_size=32, workers=1)
    assert sorted(p.name for p in out.iterdir()) == [
        "index.json",
        "manifest.json",
        "schema.json",
        "shard-000000.tar",
    ]
    # a new OUT: the row store goes beside it, where a killed ingest's scratch is removed
    (tmp_path / f".slimp-set-{dead}-c3c3c3c3.db").write_text("x")
    ingest("synth", synth_dir, tmp_path / "new", image_size=32, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_ingest_refuses_max_patients_per_shard_0(synth_dir, tmp_path, run_slimp):
    from slimp_cli.ingest import ingest

    with pytest.raises(SlimpError, match=r"--max-patients-per-shard must be >= 1 \(got 0\)"):
        ingest("synth", synth_dir, tmp_path / "o", image_size=32, max_patients_per_shard=0)
    res = run_slimp("ingest", "synth", synth_dir, tmp_path / "o", "--max-patients-per-shard", "0")
    assert res.returncode == 2 and "--max-patients-per-shard" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()


def test_resume_of_a_run_that_never_completed_a_step_says_why(tmp_path):
    from slimp_cli.train.session import prepare_out

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # a run killed -9 before its first checkpoint
    with pytest.raises(SlimpError) as info:
        prepare_out(run, resume=True)
    assert "never completed a step" in str(info.value) and "without --resume" in str(info.value)
