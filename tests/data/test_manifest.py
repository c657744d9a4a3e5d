"""Manifests: locating shards, and every pre-training error with its message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_dist.data import read_manifest, verify_shards
from ft_dist.data.manifest import local_path, resolve
from tests.data.helpers import flip_byte, make_split


def test_resolve_every_root_form() -> None:
    assert resolve("/d/imagenet", "train/a.tar") == "/d/imagenet/train/a.tar"
    assert resolve("https://h/x/", "val/a.tar") == "https://h/x/val/a.tar"
    assert resolve("s3://b/x", "val/a.tar") == "pipe:aws s3 cp s3://b/x/val/a.tar -"
    assert resolve("pipe:curl -s u/{path}", "val/a.tar") == "pipe:curl -s u/val/a.tar"
    assert local_path("file:///d/x", "a") == Path("/d/x/a")
    assert local_path("s3://b/x", "a") is None


def test_reads_what_make_split_wrote(tmp_path) -> None:
    make_split(tmp_path, "train", [5, 2, 4], num_classes=3)
    manifest = read_manifest(tmp_path, "train")
    assert (manifest.num_samples, manifest.num_shards, manifest.num_classes) == (11, 3, 3)
    assert manifest.shard_offsets() == [0, 5, 7]
    assert manifest.shard_url(1) == str(tmp_path / "train" / "shard-000001.tar")
    verify_shards(manifest, "checksum")


@pytest.mark.parametrize("form", ["pipe", "file"])
def test_remote_root_forms_read_the_same_manifest(tmp_path, form: str) -> None:
    make_split(tmp_path, "val", [3, 3])
    root = f"pipe:cat {tmp_path}/{{path}}" if form == "pipe" else f"file://{tmp_path}"
    assert read_manifest(root, "val").shards == read_manifest(tmp_path, "val").shards


def test_missing_manifest_names_split_and_found_splits(tmp_path) -> None:
    make_split(tmp_path, "train", [3])
    with pytest.raises(FileNotFoundError, match=r"split 'val'.*splits found there: \['train'\]"):
        read_manifest(tmp_path, "val")


def test_missing_remote_manifest(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot read manifest pipe:cat"):
        read_manifest(f"pipe:cat {tmp_path}/{{path}}", "train")


def test_missing_shard(tmp_path) -> None:
    make_split(tmp_path, "train", [3, 3])
    (tmp_path / "train" / "shard-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="shard-000001.tar.*is missing"):
        verify_shards(read_manifest(tmp_path, "train"))


def test_checksum_mismatch(tmp_path) -> None:
    make_split(tmp_path, "train", [3, 3])
    flip_byte(tmp_path / "train" / "shard-000000.tar")
    manifest = read_manifest(tmp_path, "train")
    verify_shards(manifest, "size")  # same size: only the digest can tell
    with pytest.raises(ValueError, match="shard-000000.tar does not match the sha256"):
        verify_shards(manifest, "checksum")


def test_truncated_shard_fails_the_size_check(tmp_path) -> None:
    make_split(tmp_path, "train", [3, 3])
    shard = tmp_path / "train" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(ValueError, match="shard-000001.tar has 1500 bytes"):
        verify_shards(read_manifest(tmp_path, "train"), "size")


def _edit_manifest(root: Path, split: str, edit) -> None:
    path = root / split / "manifest.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_empty_shard_list(tmp_path) -> None:
    make_split(tmp_path, "train", [3])
    _edit_manifest(tmp_path, "train", lambda m: m.update(shards=[], num_samples=0))
    with pytest.raises(ValueError, match="lists no samples"):
        read_manifest(tmp_path, "train")


def test_label_outside_class_range(tmp_path) -> None:
    make_split(tmp_path, "train", [3, 3], num_classes=5, labels=[0, 1, 2, 3, 4, 7])
    with pytest.raises(ValueError, match=r"shard-000001.tar holds labels 3..7, outside .*0..4"):
        read_manifest(tmp_path, "train")


def test_count_mismatch_and_not_a_manifest(tmp_path) -> None:
    make_split(tmp_path, "train", [3, 3])
    _edit_manifest(tmp_path, "train", lambda m: m.update(num_samples=7))
    with pytest.raises(ValueError, match="shards hold 6 samples but num_samples is 7"):
        read_manifest(tmp_path, "train")
    _edit_manifest(tmp_path, "train", lambda m: m.update(format="other"))
    with pytest.raises(ValueError, match="not an ft_dist shard manifest"):
        read_manifest(tmp_path, "train")
