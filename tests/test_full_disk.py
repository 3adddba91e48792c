"""A full disk meets every writer (issue 21): through the installed `slimp`, each one ends with
exit 1 and one line `error: no space left on DEVICE writing PATH`, leaves no temporary and
nothing that looks complete (a run dir that never completed a step is removed), and never
crashes in the HDF5 library.

Two ways to fill a disk. `RLIMIT_FSIZE` in the child: every write past the limit fails with
EFBIG, which slimp reports as a full disk (always possible). A small tmpfs mounted in a private
mount namespace (`unshare --mount`): a real ENOSPC (skipped, with the reason, where the tests
may not mount one).
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY_MODEL, _tiny_train, skip_unless_ci, slimp_executable

TINY = [
    "--image-model", "vit_test", "--input-size", "32", "--tab-dim", "16", "--embed-dim", "16",
    "-B", "8", "-N", "2", "--epochs", "1", "--max-steps", "1", "--device", "cpu",
    "--workers", "0", "--no-progress",
]  # fmt: skip


def _file_size_limit(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not a killed child
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


# (case, file-size limit in bytes, the command's arguments, the PATH its error line names)
CASES = [
    ("ingest-row-store", 8_000,
     lambda c: ["ingest", "synth", c.cohort, c.dir("ingest-row-store") / "out", "--workers", "0",
                "--image-size", "32"],
     lambda c: c.dir("ingest-row-store")),  # the SQLite scratch file beside OUT
    ("ingest-shards", 150_000,
     lambda c: ["ingest", "synth", c.cohort, c.dir("ingest-shards") / "out", "--workers", "2",
                "--image-size", "32"],
     lambda c: c.dir("ingest-shards") / "out"),
    ("pretrain", 200_000,
     lambda c: ["pretrain", c.shards, "--out", c.dir("pretrain") / "run", *TINY],
     lambda c: c.dir("pretrain") / "run" / "checkpoint-last.pt"),
    ("embed", 200_000,
     lambda c: ["embed", c.run, c.shards, "--out", c.dir("embed") / "f.h5", "--device", "cpu"],
     lambda c: c.dir("embed") / "f.h5"),
    ("extrapolate", None,
     lambda c: ["extrapolate", c.store, c.target, "--device", "cpu"],
     lambda c: c.target),
    ("export", 100_000,
     lambda c: ["export", c.run, c.dir("export") / "model"],
     lambda c: c.dir("export") / "model"),
    ("probe-json", 1_000,
     lambda c: ["probe", c.store, "--device", "cpu", "--json", c.dir("probe-json") / "p.json"],
     lambda c: c.dir("probe-json") / "p.json"),
]  # fmt: skip


@pytest.fixture(scope="module")
def ctx(synth_dir, synth_shards, tmp_path_factory):
    from slimp_cli.features.embed import embed
    from slimp_cli.train import pretrain

    base = tmp_path_factory.mktemp("full_disk")
    run = pretrain(synth_shards, base / "run", model=TINY_MODEL, train=_tiny_train(1))
    store = embed(run, synth_shards, base / "store.h5", device="cpu")
    (base / "target").mkdir()
    target = Path(shutil.copy(store, base / "target" / "t.h5"))

    def folder(name: str) -> Path:
        path = base / name
        path.mkdir(exist_ok=True)
        return path

    return SimpleNamespace(
        base=base, cohort=synth_dir, shards=synth_shards, run=run, store=store,
        target=target, dir=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def results(ctx):
    """Every case's CompletedProcess, started a few at a time."""

    def run(case):
        name, limit, args, _ = case
        if limit is None:  # half the target: extrapolate rewrites it to a temporary first
            limit = ctx.target.stat().st_size // 2
        return subprocess.run(
            [slimp_executable(), *map(str, args(ctx))],
            preexec_fn=_file_size_limit(limit),
            capture_output=True,
            text=True,
            timeout=900,
        )

    before = ctx.target.read_bytes()
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip([c[0] for c in CASES], pool.map(run, CASES)))
    return done, before


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_full_disk_is_one_line_and_leaves_nothing(ctx, results, case):
    done, target_before = results
    name, _, _, named = case
    res = done[name]
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])  # not -11 (HDF5's crash)
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: no space left on "), lines[0]
    assert lines[0].endswith(f" writing {named(ctx)}"), lines[0]
    if name == "extrapolate":  # the store it was adding to is exactly as it was
        assert ctx.target.read_bytes() == target_before
        assert sorted(p.name for p in ctx.target.parent.iterdir()) == ["t.h5"]
    else:  # no temporary, no lock, no half-written output, no run dir without a checkpoint
        assert list(ctx.dir(name).iterdir()) == [], list(ctx.dir(name).iterdir())


def _mount_namespace() -> list[str]:
    """The `unshare` prefix under which this process may mount a tmpfs, or a skip."""
    if shutil.which("unshare") is None:
        skip_unless_ci("no `unshare` on this system: cannot mount a small tmpfs")
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        probe = subprocess.run(
            [*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return prefix
    skip_unless_ci("mounting a tmpfs is not permitted here (no root, no user namespaces)")


def test_a_real_full_disk_on_a_small_tmpfs(ctx, tmp_path):
    """ENOSPC itself (the issue's segmentation fault in embed, SQLite's "database or disk is
    full" in ingest): the mount lives in a private namespace, so the shell lists what is left
    on it before it goes away."""
    prefix = _mount_namespace()
    disk = tmp_path / "disk"
    disk.mkdir()
    exe = slimp_executable()
    script = (
        f'mount -t tmpfs -o size=256k tmpfs "{disk}" || exit 99\n'
        f'"{exe}" embed "{ctx.run}" "{ctx.shards}" --out "{disk}/f.h5" --device cpu '
        f'2> "{tmp_path}/embed.err"; echo $? > "{tmp_path}/embed.rc"\n'
        f'ls -A "{disk}" > "{tmp_path}/embed.ls"\n'
        f'"{exe}" ingest synth "{ctx.cohort}" "{disk}/out" --workers 0 --image-size 32 '
        f'2> "{tmp_path}/ingest.err"; echo $? > "{tmp_path}/ingest.rc"\n'
        f'ls -A "{disk}" > "{tmp_path}/ingest.ls"\n'
    )
    res = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name, path in (("embed", disk / "f.h5"), ("ingest", None)):
        err = (tmp_path / f"{name}.err").read_text()
        lines = err.strip().splitlines()
        assert (tmp_path / f"{name}.rc").read_text().strip() == "1", err[-2000:]
        assert "Traceback" not in err and len(lines) == 1, err
        assert lines[0].startswith(f"error: no space left on tmpfs ({disk}) writing "), lines[0]
        if path is not None:
            assert lines[0].endswith(f" writing {path}"), lines[0]
        assert (tmp_path / f"{name}.ls").read_text() == "", (tmp_path / f"{name}.ls").read_text()
