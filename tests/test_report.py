"""`slimp report`: one self-contained HTML page for a run and its stores, rendered in headless
Chromium (the screenshot is not blank; the page makes no network request). Also the figure
fixes it shows: the attention maps' colour bar, the held-out marks of the t-SNE, units in the
retrieval examples, and `render_tables_page` for benchmark tables."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import skip_unless_ci
from PIL import Image

from slimp_cli.app.html import external_references, render_tables_page
from slimp_cli.app.run_report import holdout_predictions, loss_curves, roc_figure
from slimp_cli.core.errors import SlimpError
from slimp_cli.features.store import FeatureStore
from slimp_cli.models.runs import read_metrics

TINY_MODEL = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)


@pytest.fixture(scope="module")
def run_and_store(synth_shards, tmp_path_factory):
    """A tiny nested run (2 epochs, 30% of the patients held out), its store, explain output."""
    import torch

    from slimp_cli.eval.explain import explain
    from slimp_cli.features.embed import embed
    from slimp_cli.train import pretrain

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("report")
    train = dict(
        patients_per_batch=8,
        lesions_per_patient=4,
        epochs=2,
        lr=1e-3,
        device="cpu",
        workers=0,
        log_every=2,
        holdout=0.3,
    )
    run = pretrain(synth_shards, base / "run", model=TINY_MODEL, train=train)
    store = embed(run, synth_shards, base / "store.h5", batch_size=64, device="cpu")
    explain(run, synth_shards, base / "explain", n=2, device="cpu")
    return run, store, base / "explain"


@pytest.fixture(scope="module")
def report_page(run_and_store, tmp_path_factory):
    """The page written through the installed executable."""
    from conftest import _run_slimp

    run, store, explain_dir = run_and_store
    out = tmp_path_factory.mktemp("page") / "pages" / "report.html"
    res = _run_slimp(
        "report", run, "--store", store, "--explain", explain_dir, "--out", out, "--device", "cpu"
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == f"wrote {out}"
    return out


def _cells(html: str, section: str) -> list[list[str]]:
    """Text of the table rows of one section."""
    body = html.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S)
    return [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r)]
        for r in rows
    ]


def test_loss_curves_known_answer():
    rows = [
        {"step": 2, "epoch": 0, "loss": 3.0},
        {"step": 4, "epoch": 0, "loss": 1.0},
        {"step": 4, "epoch": 1, "val_loss": 2.5},
        {"step": 6, "epoch": 1, "loss": 0.5},
        {"step": 8, "epoch": 2, "val_loss": 2.0},
    ]
    c = loss_curves(rows)
    assert c["epochs"] == [1, 2] and c["train"] == [2.0, 0.5] and c["val"] == [2.5, 2.0]
    assert c["steps"] == [(2, 3.0), (4, 1.0), (6, 0.5)] and c["val_steps"] == [(4, 2.5), (8, 2.0)]
    assert loss_curves(rows[:2])["val"] == [None]


def test_page_holds_the_run_its_curves_and_its_stores(report_page, run_and_store):
    run, store, _ = run_and_store
    html = report_page.read_text()
    assert external_references(html) == []
    assert "Content-Security-Policy" in html and "<script" not in html
    for section in ("recipe", "training", "store-0", "retrieval-0", "explain"):
        assert f'<section id="{section}">' in html, section
    imgs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(imgs) >= 7 and all(s.startswith("data:image/png;base64,") for s in imgs)
    for src in imgs:  # each one a real PNG
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size[0] > 50
    # per-epoch losses: the mean of each epoch's train rows, the validation rows as they are
    rows = read_metrics(run, kind="all")
    table = [r for r in _cells(html, "training") if r and r[0].isdigit()]
    assert len(table) == 2
    for epoch, train, val in table:
        e = int(epoch)
        mean = np.mean([r["loss"] for r in rows if "loss" in r and r["epoch"] == e - 1])
        (v,) = [r["val_loss"] for r in rows if "val_loss" in r and r["epoch"] == e]
        assert float(train) == pytest.approx(mean, abs=5e-4)
        assert float(val) == pytest.approx(v, abs=5e-4)
    # the probe table: n = the held-out rows of known malignancy, the baselines beside
    with FeatureStore.open(store) as s:
        held = (s.split == "holdout") & (s.malignant >= 0)
        n, n_pos = int(held.sum()), int((s.malignant[held] == 1).sum())
    probe = [r for r in _cells(html, "store-0") if len(r) > 5][1:]
    assert [r[0] for r in probe] == [
        "SLIMP features: linear probe",
        "SLIMP features: kNN",
        "metadata only: logistic regression",
        "metadata only: gradient boosting",
    ]
    assert all(r[2] == "holdout" and r[3] == str(n) and r[4] == str(n_pos) for r in probe)
    assert f"{n} test lesions ({n_pos} malignant)" in html  # the ROC's caption
    assert "vit_test" in html and "biopsied" in html  # the recipe and an excluded column


def test_roc_overlay_is_the_probes_own_numbers(run_and_store):
    """The ROC's AUCs are those `probe --baseline` reports for the same seed and rows."""
    from slimp_cli.eval.probe import run_probe

    _, store, _ = run_and_store
    pred = holdout_predictions(store, seed=0)
    assert pred["split"] == "holdout"
    _, aucs = roc_figure(pred, title="t")
    report = run_probe(store, baseline=True, seeds=(0,), methods=("linear",), device="cpu")
    probe = {r["method"]: r["metrics"]["auc"]["mean"] for r in report["results"]}
    assert aucs["linear"] == pytest.approx(probe["linear"], abs=1e-9)
    assert aucs["baseline-logreg"] == pytest.approx(probe["baseline-logreg"], abs=1e-9)


def test_report_with_probe_json_and_errors(run_and_store, tmp_path, run_slimp, run_cli):
    run, store, explain_dir = run_and_store
    probe = tmp_path / "probe.json"
    res = run_cli(
        "probe", store, "--seeds", "0,1", "--baseline", "--json", probe, "--device", "cpu"
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "r.html"
    res = run_cli("report", run, "--probe-json", probe, "--out", out)
    assert res.exit_code == 0, res.output
    html = out.read_text()
    linear = next(r for r in json.loads(probe.read_text())["results"] if r["method"] == "linear")
    acc = linear["metrics"]["accuracy"]
    assert f"{acc['mean']:.3f} ± {acc['std']:.3f}" in html  # two seeds: mean ± std
    # user errors: one line, exit 1, nothing written (the installed executable for the first)
    bad = tmp_path / "bad.html"
    res = run_slimp("report", tmp_path, "--out", bad)
    assert res.returncode == 1 and res.stderr.startswith("error: ") and not bad.exists()
    assert "not a slimp run dir" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    for args, words in [
        ((run, "--probe-json", store, "--out", bad), "store.h5"),
        ((run, "--probe-json", run / "config.json", "--out", bad), "not a `slimp probe --json`"),
        ((run, "--explain", tmp_path, "--out", bad), "no attention.png"),
        ((run, "--store", tmp_path / "none.h5", "--out", bad), "none.h5"),
        ((run, "--out", tmp_path), "is a folder"),
    ]:
        res = run_cli("report", *args)
        assert res.exit_code == 1, (args, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), lines
        assert words in lines[0], lines[0]
        assert not bad.exists()
    assert run_cli("report", run).exit_code == 2  # --out is required


def test_tsne_of_the_held_out_rows_and_their_marks(run_and_store, tmp_path):
    from slimp_cli.eval.tsne import tsne_data, write_tsne

    _, store, _ = run_and_store
    with FeatureStore.open(store) as s:
        side, mal = s.split, s.malignant
    data = tsne_data(store, seed=0, side="holdout")
    expected = np.flatnonzero((side == "holdout") & (mal >= 0))
    np.testing.assert_array_equal(data["rows"], expected)
    assert set(data["split"]) == {"holdout"}
    write_tsne(store, tmp_path, seed=0)
    saved = json.loads((tmp_path / "tsne.json").read_text())
    assert saved["split"] == [str(side[r]) for r in np.flatnonzero(mal >= 0)]
    with pytest.raises(SlimpError, match="train/holdout"):
        tsne_data(_store_without_split(tmp_path), side="holdout")


def test_tsne_draws_held_out_rows_apart(tmp_path):
    """Black-edged markers for held-out rows: the same points, all held out, draw far more
    dark grey pixels than all trained on (the legends are alike: two entries each)."""
    from slimp_cli.eval import figures

    rng = np.random.default_rng(0)
    panels = {"image": rng.normal(size=(120, 2)), "image + lesion": rng.normal(size=(120, 2))}
    malignant = rng.integers(0, 2, 120)
    dark = []
    for side in ("train", "holdout"):
        path = tmp_path / f"{side}.png"
        figures.tsne_panels(path, panels, malignant, title="t", split=np.full(120, side))
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
        grey_dark = (rgb.max(-1) - rgb.min(-1) < 25) & (rgb.mean(-1) < 130)  # edges, text
        dark.append(int(grey_dark.sum()))
    assert dark[1] > dark[0] + 1000, dark


def _store_without_split(tmp_path: Path) -> Path:
    from conftest import _write_store

    rng = np.random.default_rng(0)
    return _write_store(
        tmp_path / "plain.h5",
        features={"image": rng.normal(size=(20, 4)).astype(np.float32)},
        patient_id=np.arange(20),
        label=np.arange(20) % 2,
    )


def test_attention_maps_have_a_colour_bar(tmp_path):
    """Grey pictures under constant maps draw no red anywhere: red pixels are the bar's top."""
    from slimp_cli.eval.figures import attention_grid

    pictures = [np.full((32, 32, 3), 128, np.uint8) for _ in range(2)]
    maps = {"run": np.ones((2, 4, 4))}
    lesions = [{"lesion_id": f"L{i}", "label": "nevus", "malignant": 0} for i in range(2)]
    attention_grid(tmp_path / "a.png", pictures, maps, lesions)
    rgb = np.asarray(Image.open(tmp_path / "a.png").convert("RGB")).astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 60) & (rgb[..., 1] < 60)
    assert red.sum() > 20, "no colour bar (jet's top colour) in the figure"
    ys, xs = np.nonzero(red)
    assert ys.min() > rgb.shape[0] * 0.6  # below the maps
    assert xs.mean() > np.nonzero(blue[ys.min() : ys.max() + 1])[1].mean()  # 0 left, 1 right


def test_retrieval_example_numbers_carry_units():
    from slimp_cli.eval.examples import _caption, format_value, unit_of

    assert unit_of("diameter_1") == "mm" and unit_of("clin_size_long_diam_mm") == "mm"
    assert unit_of("age") == "years" and unit_of("itch") is None
    assert format_value("diameter_2", 12.0) == "12.0 mm" and format_value("itch", True) == "True"
    row = {"label": "NEV", "lesion_metadata": {"region": "ARM", "diameter_1": 7.0}}
    assert (
        _caption(row, 0.5, ["region", "diameter_1"])
        == "NEV, cos 0.50\nregion=ARM\ndiameter_1=7.0 mm"
    )


def test_render_tables_page():
    report = {
        "classification": [
            {
                "dataset": "pad",
                "model": "SLIMP <nested>",
                "test_rows": 53,
                "metrics": {"accuracy": {"mean": 0.875, "std": 0.01, "n": 3}},
                "paper": {"accuracy": 81.2, "source": "Table 3"},
            }
        ],
        "holdout": {"pad": {"rows": 53, "patients": 42}},
        "warnings": ["a <warning>"],
    }
    html = render_tables_page(report)
    assert external_references(html) == []
    assert "0.875 ± 0.010" in html and "81.200" in html and ">53<" in html
    assert "SLIMP &lt;nested&gt;" in html and "a &lt;warning&gt;" in html  # escaped
    html = render_tables_page(report, tables=[("T3", ["model", "Acc"], [["SLIMP", "87.5"]])])
    assert "<h3>T3</h3>" in html and ">87.5<" in html and "0.875" not in html


def test_external_references_finds_what_a_browser_would_fetch():
    page = (
        '<img src="data:image/png;base64,AA"><a href="#x">x</a><p>see https://arxiv.org</p>'
        '<img src="http://a.example/x.png"><link href="//cdn.example/f.css">'
        "<style>@import 'https://f.example/a.css'; p { background: url(img.png) }</style>"
    )
    assert external_references(page) == [
        "http://a.example/x.png",
        "//cdn.example/f.css",
        "https://f.example/a.css",
        "img.png",
    ]


# ------------------------------------------------------------------------------------------
# headless Chromium
# ------------------------------------------------------------------------------------------
# Chromium's own background traffic (time sync, sign-in, component checks) goes to Google's
# service hosts whatever the page; anything else through the proxy came from the page.
BROWSER_HOSTS = ("google.com", "gstatic.com", "googleapis.com", "gvt1.com")


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("SLIMP_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (SLIMP_REQUIRE_CHROMIUM) but not installed")
        skip_unless_ci("chromium (Debian's `chromium` package) is not installed: page not rendered")
    return exe


class _Proxy:
    """An HTTP proxy that answers nothing and records the first line of every request."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                self.requests.append(conn.recv(4096).split(b"\r\n")[0].decode("latin-1"))
            except OSError:
                self.requests.append("?")
            conn.close()

    def hosts(self) -> list[str]:
        out = []
        for line in self.requests:
            parts = line.split()
            target = parts[1] if len(parts) > 1 else line
            host = re.sub(r"^[a-z]+://", "", target).split("/")[0].split(":")[0]
            if not any(host == h or host.endswith("." + h) for h in BROWSER_HOSTS):
                out.append(host)
        return out

    def close(self) -> None:
        self.sock.close()


def _render(exe: str, page: Path, shot: Path, profile: Path) -> tuple[list[str], str]:
    """Load `page` in headless Chromium behind the recording proxy; returns (hosts the page
    asked for, Chromium's log) and writes the screenshot."""
    proxy = _Proxy()
    try:
        res = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",  # root in a container
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                f"--user-data-dir={profile}",
                f"--proxy-server=http://127.0.0.1:{proxy.port}",
                "--proxy-bypass-list=<-loopback>",
                "--enable-logging=stderr",
                "--v=0",
                "--hide-scrollbars",
                "--window-size=1280,3600",
                f"--screenshot={shot}",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        proxy.close()
    if res.returncode != 0 or not shot.is_file():
        if os.environ.get("SLIMP_REQUIRE_CHROMIUM"):
            pytest.fail(f"chromium could not render: {res.stderr[-2000:]}")
        skip_unless_ci(f"chromium cannot run here (exit {res.returncode}): {res.stderr[-300:]}")
    return proxy.hosts(), res.stderr


def test_page_renders_in_chromium_without_a_network_request(report_page, tmp_path):
    exe = _chromium()
    # the detectors work: a page that fetches is caught by the proxy, or, under the page's
    # CSP, refused and logged on the page's console
    fetching = tmp_path / "fetching.html"
    fetching.write_text('<html><body><img src="http://fetch.example.invalid/a.png"></body></html>')
    hosts, _ = _render(exe, fetching, tmp_path / "f.png", tmp_path / "p1")
    assert "fetch.example.invalid" in hosts
    guarded = tmp_path / "guarded.html"
    guarded.write_text(
        report_page.read_text().replace("</body>", '<img src="http://x.invalid/a.png"></body>')
    )
    hosts, log = _render(exe, guarded, tmp_path / "g.png", tmp_path / "p2")
    assert "Content Security Policy" in log and "x.invalid" in log and hosts == []

    shot = tmp_path / "report.png"
    hosts, log = _render(exe, report_page, shot, tmp_path / "p3")
    assert hosts == [], f"the page asked the network for {hosts}"
    assert "Content Security Policy" not in log, log[-2000:]
    grey = np.asarray(Image.open(shot).convert("L")).astype(float)
    assert grey.std() > 20  # not a blank page
    assert (grey < 200).mean() > 0.01  # text, tables and a figure in the first screen
    # the loss figure (an inline PNG) was drawn: its orange validation curve is on screen
    colour = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    orange = np.abs(colour - np.array([255, 127, 14])).max(-1) < 40
    assert orange.sum() > 100
