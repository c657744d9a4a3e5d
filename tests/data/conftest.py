"""Shared real datasets for the data tests (written once per session; seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.data.bundled import write_mnist


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled MNIST digits as shards (train/val/test/ood), shared read-only."""
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, seed=0)
    return root
