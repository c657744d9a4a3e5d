"""Fixtures for the CLI tests: a small labelled dataset (3 classes, 12-px grayscale)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.helpers import make_split


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_split(root, "train", [16, 16, 16, 16])
    make_split(root, "val", [8])
    make_split(root, "test", [8])
    return root
