"""Two writers of each kind started at once on one output (issue 21), through the installed
`slimp`: nothing a command reported as written is lost. Embed, ingest and export (no
--overwrite): one exits 0, the other 1 with one line naming the first one's pid (its lock) or
the output it found (the check repeated at the rename). Extrapolate (ilp and il into one
target) and probe --json: whichever exit 0 are all in the result, never silently replaced.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY_MODEL, _tiny_train, slimp_executable

from slimp_cli.features.store import FeatureStore

REFUSED = re.compile(
    r"^error: .*(being written by another slimp process \(pid (\d+)\)|already exists; add "
    r"--overwrite|appeared while this command ran|already holds an ingested dataset|is not empty)"
)

# (kind, arguments of writer i = 0 or 1)
PAIRS = [
    ("embed", lambda c, i: ["embed", c.run, c.shards, "--out", c.dir("embed") / "f.h5",
                            "--device", "cpu"]),
    ("ingest", lambda c, i: ["ingest", "synth", c.cohorts[i], c.dir("ingest") / "out",
                             "--workers", "0", "--image-size", "32"]),
    ("extrapolate", lambda c, i: ["extrapolate", c.store, c.target, "--device", "cpu",
                                  "--strategy", ("ilp", "il")[i]]),
    ("export", lambda c, i: ["export", c.run, c.dir("export") / "model"]),
    ("probe-json", lambda c, i: ["probe", c.store, "--device", "cpu", "--seeds", str(i),
                                 "--json", c.dir("probe-json") / "p.json"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def ctx(synth_dir, synth_shards, tmp_path_factory):
    from slimp_cli.features.embed import embed
    from slimp_cli.ingest.synth import generate_cohort
    from slimp_cli.train import pretrain

    base = tmp_path_factory.mktemp("concurrent")
    run = pretrain(synth_shards, base / "run", model=TINY_MODEL, train=_tiny_train(1))
    store = embed(run, synth_shards, base / "store.h5", device="cpu")
    (base / "extrapolate").mkdir()
    target = Path(shutil.copy(store, base / "extrapolate" / "t.h5"))
    other = generate_cohort(base / "cohort-b", patients=25, seed=1, image_size=32).out

    def folder(name: str) -> Path:
        path = base / name
        path.mkdir(exist_ok=True)
        return path

    return SimpleNamespace(
        run=run, shards=synth_shards, store=store, target=target, cohorts=(synth_dir, other),
        dir=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(ctx):
    """kind -> the two writers' (pid, rc, stdout, stderr), started at once."""

    def pair(item):
        kind, args = item
        procs = [
            subprocess.Popen(
                [slimp_executable(), *map(str, args(ctx, i))],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in (0, 1)
        ]
        outs = [p.communicate(timeout=900) for p in procs]
        return [
            SimpleNamespace(pid=p.pid, rc=p.returncode, out=o, err=e)
            for p, (o, e) in zip(procs, outs)
        ]

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip([k for k, _ in PAIRS], pool.map(pair, PAIRS)))


def _outcome(runs):
    """The writers that exited 0; each other one exited 1 with one line saying why, naming
    the other writer's pid when its lock refused it."""
    for run in runs:
        if run.rc == 0:
            continue
        lines = run.err.strip().splitlines()
        assert run.rc == 1 and len(lines) == 1 and "Traceback" not in run.err, run.err
        m = REFUSED.match(lines[0])
        assert m is not None, lines[0]
        if m.group(2) is not None:  # the lock: the other writer's pid
            assert int(m.group(2)) == next(r.pid for r in runs if r is not run), lines[0]
    return [r for r in runs if r.rc == 0]


@pytest.mark.parametrize("kind", ["embed", "ingest", "export"])
def test_one_of_two_writers_wins_the_other_is_one_line(ctx, outcomes, kind):
    runs = outcomes[kind]
    winners = _outcome(runs)
    assert len(winners) == 1, [(r.rc, r.err[-500:]) for r in runs]
    folder = ctx.dir(kind)
    if kind == "embed":
        assert sorted(p.name for p in folder.iterdir()) == ["f.h5"]
        with FeatureStore.open(folder / "f.h5") as st:
            lesions = json.loads((ctx.shards / "manifest.json").read_text())["counts"]["lesions"]
            assert st.n == lesions
    elif kind == "ingest":
        from slimp_cli.data.shards import verify_shards

        assert sorted(p.name for p in folder.iterdir()) == ["out"]
        out = folder / "out"
        verify_shards(out)  # complete and consistent: one dataset, not a mix of two
        manifest = json.loads((out / "manifest.json").read_text())
        winner = runs.index(winners[0])
        assert manifest["source"] == str(ctx.cohorts[winner])
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    else:
        assert sorted(p.name for p in folder.iterdir()) == ["model"]
        assert sorted(p.name for p in (folder / "model").iterdir()) == [
            "README.md",
            "config.json",
            "model.safetensors",
            "slimp_config.json",
            "slimp_heads.safetensors",
        ]


def test_two_extrapolates_into_one_target_lose_nothing(ctx, outcomes):
    runs = outcomes["extrapolate"]
    winners = _outcome(runs)
    assert winners, [r.err for r in runs]
    strategies = {("ilp", "il")[runs.index(w)] for w in winners}
    with FeatureStore.open(ctx.target) as st:
        assert strategies <= set(st.pseudo_strategies), (strategies, st.pseudo_strategies)
    assert sorted(p.name for p in ctx.target.parent.iterdir()) == ["t.h5"]


def test_two_probes_writing_one_json_leave_one_whole_report(ctx, outcomes):
    runs = outcomes["probe-json"]
    winners = _outcome(runs)
    assert winners, [r.err for r in runs]
    report = json.loads((ctx.dir("probe-json") / "p.json").read_text())
    assert report["results"] and sorted(p.name for p in ctx.dir("probe-json").iterdir()) == [
        "p.json"
    ]
