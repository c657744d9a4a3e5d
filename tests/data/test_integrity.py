"""Shard verification before training: data.verify=checksum hashes each shard once and
catches later edits (same size included) and manifest changes; full and size levels."""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from ft_dist.data import integrity, read_manifest
from ft_dist.data.integrity import STAMP_NAME, read_stamp, verify_local_shards
from tests.data.helpers import make_split


def relabel_in_place(shard: Path) -> None:
    """Change the first sample's `.cls` digit inside the tar: same size, new label."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".cls"))
        label = tar.extractfile(member).read()
    with open(shard, "r+b") as stream:
        stream.seek(member.offset_data)
        stream.write(b"2" if label != b"2" else b"1")


@pytest.fixture
def split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A split that is not "racy": changed longer ago than RACY_NS (2 s; 50 ms here)."""
    monkeypatch.setattr(integrity, "RACY_NS", 50_000_000)
    make_split(tmp_path, "train", [4, 4, 4])
    time.sleep(0.1)
    return tmp_path


def test_checksum_hashes_once_then_only_what_changed(split: Path) -> None:
    manifest = read_manifest(split, "train")
    first = verify_local_shards(manifest, "checksum")
    assert (first.num_hashed, first.num_cached) == (3, 0)
    assert first.stamp == split / "train" / STAMP_NAME and len(read_stamp(first.stamp)) == 3
    again = verify_local_shards(manifest, "checksum")
    assert (again.num_hashed, again.num_cached) == (0, 3)
    full = verify_local_shards(manifest, "full")
    assert (full.num_hashed, full.num_cached) == (3, 0)


def test_same_size_edit_in_place_is_caught_by_the_default(split: Path) -> None:
    manifest = read_manifest(split, "train")
    verify_local_shards(manifest)  # recorded as verified
    shard = split / "train" / "shard-000001.tar"
    size, mtime = shard.stat().st_size, shard.stat().st_mtime_ns
    relabel_in_place(shard)
    os.utime(shard, ns=(mtime, mtime))  # even with its mtime put back: ctime moves anyway
    assert shard.stat().st_size == size
    verify_local_shards(manifest, "size")  # sizes alone cannot tell
    with pytest.raises(ValueError, match="shard-000001.tar does not match the sha256"):
        verify_local_shards(manifest)


def test_a_manifest_digest_that_no_longer_matches_is_caught(split: Path) -> None:
    verify_local_shards(read_manifest(split, "train"))  # recorded as verified
    path = split / "train" / "manifest.json"
    content = json.loads(path.read_text())
    content["shards"][2]["sha256"] = "0" * 64
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="shard-000002.tar does not match the sha256"):
        verify_local_shards(read_manifest(split, "train"))


def test_freshly_written_shards_are_hashed_but_not_recorded(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [4, 4])
    manifest = read_manifest(tmp_path, "train")
    assert verify_local_shards(manifest).num_hashed == 2
    assert verify_local_shards(manifest).num_hashed == 2  # an edit in the same tick could hide


def test_unknown_level_names_the_key(split: Path) -> None:
    with pytest.raises(ValueError, match="data.verify='sha'"):
        verify_local_shards(read_manifest(split, "train"), "sha")


def _move_a_sample_in_the_manifest(split: Path) -> None:
    """Shard 0 claims one sample more, shard 1 one fewer: the split's total still adds up."""
    path = split / "train" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["shards"][0]["num_samples"] += 1
    raw["shards"][1]["num_samples"] -= 1
    path.write_text(json.dumps(raw))


def test_a_wrong_per_shard_count_is_caught_before_training(split: Path) -> None:
    verify_local_shards(read_manifest(split, "train"))  # recorded as verified
    _move_a_sample_in_the_manifest(split)
    manifest = read_manifest(split, "train")  # consistent: passes the manifest checks
    verify_local_shards(manifest, "size")  # sizes alone cannot tell
    for level in ("checksum", "full"):  # the recorded check no longer holds: counted again
        with pytest.raises(ValueError) as raised:
            verify_local_shards(manifest, level)
        message = str(raised.value)
        assert "shard-000000.tar holds 4 samples but its manifest entry says num_samples=5" in (
            message
        )


def test_digest_and_count(split: Path) -> None:
    shard = split / "train" / "shard-000002.tar"
    digest, count = integrity.digest_and_count(shard)
    assert count == 4 and digest == read_manifest(split, "train").shards[2].sha256
    shard.write_bytes(b"not a tar at all" * 64)
    assert integrity.digest_and_count(shard)[1] is None
