"""Corruptions keep shape and range, grow with severity and are reproducible."""

from __future__ import annotations

import pytest
import torch

from ft_dist.ensemble.corruption_table import CORRUPTION_LEVELS, SEVERITIES
from ft_dist.ensemble.corruptions import CORRUPTIONS, corrupt


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_shape_range_and_severity(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=generator)
    mild = corrupt(images, name, 1)
    strong = corrupt(images, name, 5)
    assert mild.shape == images.shape and mild.dtype == images.dtype
    assert mild.min() >= 0.0 and mild.max() <= 1.0
    assert torch.equal(corrupt(images, name, 3), corrupt(images, name, 3))
    change_mild = (mild - images).abs().mean()
    change_strong = (strong - images).abs().mean()
    assert 0 < change_mild < change_strong


def test_corruption_errors() -> None:
    images = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="choose from"):
        corrupt(images, "fog", 1)
    with pytest.raises(ValueError, match="severities"):
        corrupt(images, "contrast", 6)
    with pytest.raises(ValueError, match="float"):
        corrupt(images[0], "contrast", 1)


def test_every_corruption_in_the_table_is_implemented() -> None:
    assert list(CORRUPTIONS) == list(CORRUPTION_LEVELS)
    assert all(len(levels) == len(SEVERITIES) for levels in CORRUPTION_LEVELS.values())
