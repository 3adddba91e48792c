"""Values and images that used to pass silently or crash ingest (issue 13, parts 5 and 7):
plausible ranges, non-finite numbers, statistics that overflow, undecodable text, wide and
transparent image modes, image paths outside SOURCE, deterministic manifests with skips."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.schema import numeric_stats as mean_std
from slimp_cli.data.shards import ShardIndex
from slimp_cli.ingest import ingest
from slimp_cli.ingest.images import normalise_image, to_rgb

COLUMNS = ["pid", "lid", "img", "dx", "age", "sex", "diam", "score", "site"]


def schema() -> dict:
    return {
        "name": "values-test",
        "patient_id": "pid",
        "lesion_id": "lid",
        "image": "img",
        "label": "dx",
        "malignant": ["mel"],
        "patient_features": [
            {"name": "age", "type": "numerical", "min": 0, "max": 120},
            {"name": "sex", "type": "categorical"},
        ],
        "lesion_features": [
            {"name": "diam", "type": "numerical", "min": 0},
            {"name": "score", "type": "numerical"},  # no range
            {"name": "site", "type": "categorical"},
        ],
        "excluded": [],
    }


def png(seed: int, size: int = 20) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def make_source(tmp_path, rows: list[dict], *, name: str = "src", encoding_errors=None):
    """SOURCE/metadata.csv (+ images/<img> for every row whose image is a plain name)."""
    src = tmp_path / name
    (src / "images").mkdir(parents=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row.get(c, "") for c in COLUMNS])
    data = text.getvalue().encode("utf-8")
    for bad in encoding_errors or []:  # (placeholder, raw bytes): bytes that are not UTF-8
        data = data.replace(bad[0].encode(), bad[1])
    (src / "metadata.csv").write_bytes(data)
    for i, row in enumerate(rows):
        img = row["img"]
        if "/" not in img:
            (src / "images" / img).write_bytes(png(i))
    return src


def row(i: int, **cells) -> dict:
    base = {
        "pid": f"p{i}",
        "lid": f"l{i}",
        "img": f"{i}.png",
        "dx": "mel" if i % 2 else "nev",
        "age": "50",
        "sex": "f",
        "diam": "4",
        "score": "1",
        "site": "arm",
    }
    return {**base, **cells}


def warnings_by_row(manifest: dict) -> dict[tuple[int, str], str]:
    return {(w["row"], w["column"]): w["kind"] for w in manifest["warnings"]}


def test_out_of_range_and_non_finite_numbers_become_missing_with_a_warning(tmp_path):
    rows = [
        row(1, age="-5"),
        row(2, age="400"),
        row(3, diam="-3"),
        row(4, age="1e999"),  # overflows a float: was silently missing
        row(5, age="1e100"),  # finite but out of range
        row(6, score="1e100"),  # no range: kept
        row(7, age="30", diam="0"),  # the bounds themselves are plausible
    ]
    src = make_source(tmp_path, rows)
    result = ingest("csv", src, tmp_path / "out", schema=schema(), image_size=16)
    assert warnings_by_row(result.manifest) == {
        (1, "age"): "out_of_range",
        (2, "age"): "out_of_range",
        (3, "diam"): "out_of_range",
        (4, "age"): "non_finite",
        (5, "age"): "out_of_range",
    }
    first = result.manifest["warnings"][0]
    assert first["value"] == "-5" and "[0, 120]" in first["message"]
    assert result.manifest["counts"]["patients"] == 7  # no row was dropped
    age = next(f for f in result.schema["patient_features"] if f["name"] == "age")
    assert age["mean"] == pytest.approx((50 + 50 + 30) / 3)  # rows 3, 6 and 7 were plausible
    assert age["missing_rate"] == pytest.approx(4 / 7)
    index = ShardIndex.open(tmp_path / "out")
    fields = {index.patient(i).patient_id: index.patient(i).fields for i in range(len(index))}
    assert fields["p1"]["age"] is None and fields["p7"]["age"] == 30.0
    # --strict: a changed value is an error naming the row and column, and nothing is written
    with pytest.raises(SlimpError, match=r"--strict: row 1 column 'age': value '-5'"):
        ingest("csv", src, tmp_path / "strict", schema=schema(), image_size=16, strict=True)
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_statistics_never_overflow(tmp_path):
    src = make_source(tmp_path, [row(1, score="1e200"), row(2, score="-1e200"), row(3)])
    result = ingest("csv", src, tmp_path / "out", schema=schema(), image_size=16)
    score = next(f for f in result.schema["lesion_features"] if f["name"] == "score")
    assert math.isfinite(score["mean"]) and math.isfinite(score["std"])
    assert score["std"] == pytest.approx(math.sqrt(2 / 3) * 1e200)
    assert mean_std([1e308, 1e308]) == (pytest.approx(1e308), 1e-6)
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)  # exact as before for ordinary values
    assert mean_std([]) == (0.0, 1.0)


def test_undecodable_text_is_a_warning_naming_the_row(tmp_path):
    # row 2's site and row 3's label hold a Latin-1 byte in a UTF-8 table
    rows = [row(1), row(2, site="SITE2"), row(3, dx="LABEL3")]
    bad = [("SITE2", b"caf\xe9"), ("LABEL3", b"n\xe9v")]
    src = make_source(tmp_path, rows, encoding_errors=bad)
    result = ingest("csv", src, tmp_path / "out", schema=schema(), image_size=16)
    assert warnings_by_row(result.manifest) == {(2, "site"): "undecodable"}
    assert [(s["row"], s["kind"]) for s in result.manifest["skipped"]] == [(3, "undecodable")]
    assert "'dx'" in result.manifest["skipped"][0]["reason"]
    site = next(f for f in result.schema["lesion_features"] if f["name"] == "site")
    assert site["vocab"] == ["arm"]  # no U+FFFD category
    assert result.schema["classes"] == ["mel", "nev"]
    with pytest.raises(SlimpError, match=r"--strict: row 3 .*not valid UTF-8"):
        ingest("csv", src, tmp_path / "strict", schema=schema(), image_size=16, strict=True)


def _encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def _decoded(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64)


def test_sixteen_bit_greyscale_keeps_its_gradient():
    ramp = np.tile(np.linspace(0, 65535, 64), (64, 1)).astype(np.uint16)
    data = _encoded(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16-bit
    pixels = _decoded(normalise_image(data, 32)[0])
    assert pixels[:, :4].mean() < 20 and pixels[:, -4:].mean() > 235  # dark left, bright right
    assert 100 < pixels.mean() < 155  # not uniformly white (was 255 everywhere)


@pytest.mark.parametrize(
    ("mode", "fmt", "value", "expected"),
    [
        ("I", "TIFF", 1000, 1000 / 257),  # 32-bit integers in the 16-bit range
        ("F", "TIFF", 0.5, 127.5),  # floats in 0..1
        ("LA", "PNG", (80, 0), 255),  # fully transparent: the white background
        ("LA", "PNG", (80, 255), 80),  # opaque grey stays grey
        ("CMYK", "JPEG", (0, 0, 0, 0), 255),  # no ink: white
    ],
)
def test_other_modes_convert_in_proportion(mode, fmt, value, expected):
    img = Image.new(mode, (24, 24), value)
    pixels = _decoded(normalise_image(_encoded(img, fmt), 16)[0])
    assert pixels.mean() == pytest.approx(expected, abs=3)


def test_palette_transparency_is_composited_and_la_is_refused_with_its_reason():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([200, 0, 0] * 256)
    pal.info["transparency"] = 0  # the only colour is transparent
    assert np.asarray(to_rgb(pal)).mean() == 255
    from slimp_cli.ingest.images import UnsupportedImage

    with pytest.raises(UnsupportedImage, match="image mode La"):
        to_rgb(Image.new("La", (4, 4)))


def test_image_size_is_bounded(tmp_path):
    src = make_source(tmp_path, [row(1)])
    for size in (8, 4097, 100_000):
        with pytest.raises(SlimpError, match=rf"--image-size must be between 16 and 4096 .*{size}"):
            ingest("csv", src, tmp_path / f"o{size}", schema=schema(), image_size=size)


def test_images_outside_source_need_allow_outside(tmp_path):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png(99))
    rows = [row(1), row(2, img="../elsewhere.png"), row(3, img=str(outside))]
    src = make_source(tmp_path, rows)
    result = ingest("csv", src, tmp_path / "out", schema=schema(), image_size=16)
    skipped = {s["row"]: (s["kind"], s["reason"]) for s in result.manifest["skipped"]}
    assert sorted(skipped) == [2, 3]
    assert {kind for kind, _ in skipped.values()} == {"outside_source"}
    assert "--allow-outside" in skipped[2][1] and "../elsewhere.png" in skipped[2][1]
    assert result.manifest["counts"]["images"] == 1
    # read when allowed, and noted; rows 2 and 3 are the same file: the second is a duplicate
    allowed = ingest(
        "csv", src, tmp_path / "allowed", schema=schema(), image_size=16, allow_outside=True
    )
    assert allowed.manifest["counts"]["images"] == 2
    assert [s["kind"] for s in allowed.manifest["skipped"]] == ["duplicate_image"]
    assert any("outside" in n and "--allow-outside" in n for n in allowed.manifest["notes"])


def test_two_ingests_with_skips_write_byte_identical_manifests(tmp_path):
    rows = [row(1), row(2), row(3), row(4, img="missing.png"), row(5, age="-1")]
    src = make_source(tmp_path, rows)
    (src / "images" / "missing.png").unlink()
    (src / "images" / "2.png").write_bytes(b"not an image at all")  # PIL names a BytesIO
    (src / "images" / "3.png").write_bytes(png(3)[:60])  # truncated
    outs = [tmp_path / "a", tmp_path / "b"]
    for out, workers in zip(outs, (1, 2)):
        result = ingest("csv", src, out, schema=schema(), image_size=16, workers=workers)
    kinds = sorted(s["kind"] for s in result.manifest["skipped"])
    assert kinds == ["bad_image", "bad_image", "missing_image"]
    assert all(" at 0x" not in s["reason"] for s in result.manifest["skipped"])
    assert result.manifest["warnings"][0]["kind"] == "out_of_range"
    for name in ("manifest.json", "schema.json", "shard-000000.tar"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert json.loads((outs[0] / "manifest.json").read_text())["complete"] is True
