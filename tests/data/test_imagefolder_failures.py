"""`ft-dist shards imagefolder` when the source is not clean: nothing half-written is left,
and every file it skips is counted."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

from PIL import Image

from ft_dist.cli import main
from ft_dist.data import read_manifest
from ft_dist.data.imagefolder import MAX_PIXELS
from tests.data.test_imagefolder import SYNSETS, jpeg_bytes, make_tree


def test_a_failed_write_leaves_no_temp_or_partial_shards(tmp_path: Path, capsys) -> None:
    make_tree(tmp_path / "src", per_class=4)
    # The writer shuffles with --seed 0: put the corrupt file where it is met last, so that
    # whole shards are finished (and one is open) when the write fails.
    names = sorted(p for p in (tmp_path / "src").rglob("*.JPEG"))
    order = list(range(len(names)))
    random.Random(0).shuffle(order)
    last = names[order[-1]]
    last.write_bytes(last.read_bytes()[:300])
    out = tmp_path / "out"
    args = ["shards", "imagefolder", "--src", str(tmp_path / "src"), "--out", str(out),
            "--shard-size", "5", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert last.name in capsys.readouterr().err
    assert sorted(p.name for p in (out / "train").iterdir()) == []


def test_non_image_files_are_counted_and_named(tmp_path: Path, caplog, capsys) -> None:
    make_tree(tmp_path / "src", per_class=2)
    (tmp_path / "src" / SYNSETS[0] / "notes.txt").write_text("not an image")
    (tmp_path / "src" / SYNSETS[2] / "labels.csv").write_text("a,b\n")
    (tmp_path / "src" / SYNSETS[2] / "x.JPEG").write_bytes(jpeg_bytes(7))
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert main(["shards", "imagefolder", "--src", str(tmp_path / "src"),
                     "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    manifest = read_manifest(out, "train")
    assert manifest.num_samples == 7
    assert manifest.extra["skipped_non_images"] == 2
    assert "skipped 2 file(s)" in caplog.text
    assert f"{SYNSETS[0]}/notes.txt" in caplog.text and f"{SYNSETS[2]}/labels.csv" in caplog.text
    assert (
        "train: 7 samples, 3 classes, 1 shards, 2 non-image files skipped"
        in capsys.readouterr().out
    )


def test_a_clean_source_reports_no_skipped_files(tmp_path: Path, caplog, capsys) -> None:
    make_tree(tmp_path / "src", per_class=1)
    with caplog.at_level("WARNING"):
        main(["shards", "imagefolder", "--src", str(tmp_path / "src"),
              "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert read_manifest(tmp_path / "out", "train").extra["skipped_non_images"] == 0
    assert "skipped" not in caplog.text and "skipped" not in capsys.readouterr().out


def test_an_empty_class_folder_is_named_in_a_warning(tmp_path: Path, caplog, capsys) -> None:
    make_tree(tmp_path / "src", per_class=2)
    (tmp_path / "src" / "n09999999").mkdir()  # sorts last: earlier labels unchanged
    with caplog.at_level("WARNING"):
        main(["shards", "imagefolder", "--src", str(tmp_path / "src"),
              "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    manifest = read_manifest(tmp_path / "out", "train")
    assert manifest.num_classes == len(SYNSETS) + 1 and manifest.num_samples == 2 * len(SYNSETS)
    assert "class folder(s) n09999999 under" in caplog.text and "hold no images" in caplog.text


def png_header_only(width: int, height: int) -> bytes:
    """A PNG with its header and no pixel data: PIL reads its size; decoding would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_an_oversized_image_is_refused_before_decoding(tmp_path: Path, capsys) -> None:
    make_tree(tmp_path / "src", per_class=1)
    huge = tmp_path / "src" / SYNSETS[1] / "huge.png"
    huge.write_bytes(png_header_only(12_000, 12_000))  # 144 megapixels, never decoded
    args = ["shards", "imagefolder", "--src", str(tmp_path / "src"),
            "--out", str(tmp_path / "out"), "--no-progress", "--skip-corrupt"]  # fmt: skip
    assert main(args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"{huge} is 12000x12000 = 144 megapixels, above --max-pixels 50000000" in line
    assert "raise --max-pixels to accept it" in line
    assert MAX_PIXELS == 50_000_000  # the CLI's default (it does not import the writer)


def test_max_pixels_raises_or_lowers_the_limit(tmp_path: Path, capsys) -> None:
    make_tree(tmp_path / "src", per_class=1)
    side = Image.open(next((tmp_path / "src").rglob("*.JPEG"))).width
    base = ["shards", "imagefolder", "--src", str(tmp_path / "src"), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a"), "--max-pixels", str(side * side)]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "b"), "--max-pixels", "10"]) == 2
    assert "above --max-pixels 10" in capsys.readouterr().err
