"""`ft-dist shards imagefolder` when the source is not clean: nothing half-written is left,
and every file it skips is counted."""

from __future__ import annotations

import random
from pathlib import Path

from ft_dist.cli import main
from ft_dist.data import read_manifest
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
