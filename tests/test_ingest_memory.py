"""Ingest at scale: the table read in chunks, no torch, index.json, bounded decode-ahead.

Peak memory itself is measured by `benchmarks/ingest.py` (1x vs 4x), not here; these tests pin
the behaviours that keep it flat, each failing when its mechanism is removed.
"""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import threading
import time

from PIL import Image

from slimp_cli.data.shard_stream import entries_from_index, index_document
from slimp_cli.data.shards import ShardIndex, ShardWriter
from slimp_cli.ingest import ingest, pipeline
from slimp_cli.ingest.formats import base
from slimp_cli.ingest.images import ImageRef


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_chunked_table_gives_the_bytes_of_a_whole_read(tmp_path, pad_source, monkeypatch):
    # 7-row chunks: every feature column is typed over ~76 chunks; warnings, statistics,
    # shards and manifest must not depend on it (the default reads 531 rows in one chunk).
    whole = ingest("pad-ufes-20", pad_source, tmp_path / "whole", image_size=32)
    monkeypatch.setattr(base, "CHUNK_ROWS", 7)
    chunks = []
    real = base.pd.read_csv

    def spy(*args, **kwargs):
        chunks.append(kwargs.get("chunksize"))
        return real(*args, **kwargs)

    monkeypatch.setattr(base.pd, "read_csv", spy)
    chunked = ingest("pad-ufes-20", pad_source, tmp_path / "chunked", image_size=32)
    assert 7 in chunks
    assert whole.manifest["counts"] == chunked.manifest["counts"]
    a, b = _files(tmp_path / "whole"), _files(tmp_path / "chunked")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), "chunking changed the output"


def test_ingest_never_imports_torch(tmp_path, pad_source):
    # torch costs ~0.5 GB of RSS and seconds of start-up; ingest needs none of it.
    code = (
        "import sys\n"
        "from slimp_cli import cli\n"
        "try:\n"
        f"    cli.main(['ingest', 'pad-ufes-20', {str(pad_source)!r}, {str(tmp_path / 'o')!r},"
        " '--image-size', '32'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
    assert (tmp_path / "o" / "manifest.json").is_file()


def test_index_json_lists_every_patient_in_shard_order(tmp_path, pad_source):
    out = tmp_path / "shards"
    ingest("pad-ufes-20", pad_source, out, image_size=32, max_patients_per_shard=50)
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "slimp-index" and index["version"] == 1
    shards = ShardIndex.open(out)
    expected = [
        {
            "key": record.key,
            "patient_id": record.patient_id,
            "shard": record.shard.name,
            "images": record.n_lesions,
            "malignant": sum(e["malignant"] == 1 for e in record.lesions),
        }
        for record in shards
    ]
    # the moments are what streaming computes from the records themselves
    assert index == index_document(entries_from_index(shards))
    index["patients"] = [{k: v for k, v in p.items() if k != "moments"} for p in index["patients"]]
    assert index["patients"] == expected
    assert len({p["shard"] for p in expected}) == len(shards.manifest["shards"]) > 1
    assert sum(p["malignant"] for p in expected) == shards.manifest["counts"]["malignant"] > 0


def test_shard_writer_keeps_no_member_headers(tmp_path):
    # tarfile remembers a TarInfo per member it wrote: 2+ per image, ~1 kB each.
    writer = ShardWriter(tmp_path)
    for i in range(20):
        patient = {"patient_id": f"p{i}", "fields": {}, "derived": {}}
        lesions = [{"lesion_id": f"l{i}", "image": "0000.jpg"}]
        assert writer.write(f"p{i}", patient, lesions, [b"\xff" * 100]) == "shard-000000.tar"
        assert writer._tar.members == []
    (info,) = writer.commit()
    assert info.patients == 20 and info.images == 20


def test_decode_ahead_is_bounded(tmp_path, monkeypatch):
    # A writer slower than the decoders must not let decoded JPEGs pile up in memory.
    path = tmp_path / "x.png"
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    monkeypatch.setattr(pipeline, "WINDOW_PER_WORKER", 8)
    taken = itertools.count()
    pulled = [0]
    lock = threading.Lock()

    def jobs():
        for _ in range(3000):
            with lock:
                pulled[0] = next(taken) + 1
            yield ImageRef(str(path)), 16, None  # (ref, size, max pixels)

    results = pipeline._results(jobs(), 2, 3000)
    consumed = 0
    for _ in range(20):
        jpeg, error = next(results)
        assert error is None and jpeg
        consumed += 1
    time.sleep(1.0)  # the decoders would race ahead here without the window
    ahead = pulled[0] - consumed
    results.close()
    chunksize = max(1, min(16, 3000 // (2 * 8)))
    assert ahead <= max(4 * chunksize, 8) * 2 + 1, ahead
    assert pulled[0] < 3000


def test_row_store_groups_patients_in_python_string_order(tmp_path):
    from slimp_cli.ingest.rows import Entry
    from slimp_cli.ingest.rowstore import RowStore

    ids = ["b", "B", "a", "é", "Z", "10", "9", "ä", "a", "日本", "a b", "𝔘"]
    store = RowStore(tmp_path)
    store.begin()
    for row, pid in enumerate(ids, 1):
        store.add(
            Entry(
                row=row,
                patient_id=pid,
                lesion_id=f"L{row}",
                image_id=f"I{row}",
                ref=ImageRef("x"),
                label=None,
                malignant=-1,
                patient_values=(),
                lesion_values=(row,),
            )
        )
    store.commit()
    store.promote([(seq, e) for seq, e in store.entries(1)])
    assert store.patients() == sorted((p, ids.count(p)) for p in set(ids))
    grouped = [(e.patient_id, e.row) for e in store.grouped()]
    assert grouped == sorted((p, r) for r, p in enumerate(ids, 1))
    assert store.first("image", "k", 3) is None and store.first("image", "k", 9) == 3
    store.close()
    assert not list(tmp_path.iterdir()), "the scratch file must be deleted"


def test_scratch_files_are_removed_after_success_and_failure(tmp_path, pad_source):
    out = tmp_path / "ok"
    ingest("pad-ufes-20", pad_source, out, image_size=32)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    table = tmp_path / "bad.csv"
    table.write_text("image,patient\nnope.jpg,p1\n")
    schema = {
        "name": "t",
        "image": "image",
        "patient_id": "patient",
        "lesion_id": None,
        "label": None,
        "malignant": [],
        "patient_features": [],
        "lesion_features": [],
        "excluded": [],
    }
    try:
        ingest("csv", table, tmp_path / "failed", schema=schema, image_size=32)
    except Exception as exc:  # no usable images: a SlimpError
        assert "no usable" in str(exc)
    else:
        raise AssertionError("ingest of a table without images succeeded")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".slimp-")]


def test_hdf5_locator_finds_top_level_names_only(tmp_path):
    import h5py
    import numpy as np

    from slimp_cli.ingest.formats.slice3d import Hdf5Locator

    with h5py.File(tmp_path / "i.hdf5", "w") as h5:
        h5["ISIC_1"] = np.void(b"x")
        h5.create_group("g")["ISIC_2"] = np.void(b"y")
    locate = Hdf5Locator(tmp_path / "i.hdf5")
    assert locate("isic_id", " ISIC_1 ") == ImageRef(str(tmp_path / "i.hdf5"), "ISIC_1")
    assert locate("isic_id", "ISIC_1.jpg").key == "ISIC_1"  # a table that names files
    assert locate("isic_id", "g/ISIC_2") is None and locate("isic_id", "g") is None
    locate.close()
