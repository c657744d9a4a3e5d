"""The one atomic-write helper (ft_dist/utils.py): files and whole directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.utils import (
    partial_dir,
    partial_path,
    replace_dir,
    write_atomic,
    write_bytes_atomic,
    write_dir_atomic,
    write_text_atomic,
)


def test_a_file_is_replaced_whole_and_no_partial_stays(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_text_atomic(path, "old")
    assert write_bytes_atomic(path, b"new") == path and path.read_bytes() == b"new"

    def torn(partial: Path) -> None:
        partial.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, torn)
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert partial_path(path).parent == tmp_path and partial_path(path).name.endswith(".partial")


def test_a_directory_is_replaced_whole(tmp_path: Path) -> None:
    dest = tmp_path / "000000010"
    assert partial_dir(dest) == tmp_path / ".tmp-000000010"
    write_dir_atomic(dest, lambda tmp: (tmp / "state.pt").write_text("one"))
    (partial_dir(dest)).mkdir()  # a torn earlier attempt is emptied first
    (partial_dir(dest) / "stale").write_text("x")
    write_dir_atomic(dest, lambda tmp: (tmp / "state.pt").write_text("two"))
    assert [p.name for p in dest.iterdir()] == ["state.pt"]
    assert (dest / "state.pt").read_text() == "two"

    def torn(tmp: Path) -> None:
        (tmp / "state.pt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomic(dest, torn)
    assert (dest / "state.pt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000010"]


def test_replace_dir_publishes_a_built_directory(tmp_path: Path) -> None:
    built = partial_dir(tmp_path / "out")
    built.mkdir()
    (built / "f").write_text("x")
    assert replace_dir(built, tmp_path / "out") == tmp_path / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
