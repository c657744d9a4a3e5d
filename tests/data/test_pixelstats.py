"""Split mean/std from streamed pixel moments: exact for RGB and for grayscale targets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ft_dist.data.pixelstats import PixelMoments


def test_rgb_statistics_match_numpy() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 9, 3), dtype=np.uint8)
    total = PixelMoments()
    for image in pixels:  # streamed one image at a time
        total.add_(PixelMoments.of_array(image, rgb=True))
    stats = total.stats("RGB")
    values = pixels.reshape(-1, 3) / 255.0
    assert stats["mean"] == pytest.approx(values.mean(axis=0).tolist(), abs=1e-6)
    assert stats["std"] == pytest.approx(values.std(axis=0).tolist(), abs=1e-6)
    assert stats["num_pixels"] == 5 * 7 * 9


def test_grayscale_target_matches_pils_conversion() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64) / 255.0
    moments = PixelMoments.of_image(Image.fromarray(rgb))
    stats = moments.stats("L")
    # PIL rounds each converted pixel to an integer: agreement within that rounding.
    assert stats["mean"][0] == pytest.approx(gray.mean(), abs=2e-3)
    assert stats["std"][0] == pytest.approx(gray.std(), abs=2e-3)


def test_mixed_modes_count_gray_images_as_equal_channels() -> None:
    gray = np.full((4, 4), 200, dtype=np.uint8)
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    total = PixelMoments.of_image(Image.fromarray(gray, mode="L"))
    total.add_(PixelMoments.of_image(Image.fromarray(rgb)))
    stats = total.stats("RGB")
    assert stats["mean"] == pytest.approx([100 / 255] * 3, abs=1e-6)
    assert stats["std"] == pytest.approx([100 / 255] * 3, abs=1e-6)
    assert total.stats("L")["mean"] == pytest.approx([100 / 255], abs=1e-6)


def test_large_images_are_sampled_on_a_grid() -> None:
    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, size=(1000, 800, 3), dtype=np.uint8)
    moments = PixelMoments.of_image(Image.fromarray(big))
    assert moments.count <= 1 << 16
    assert moments.stats("RGB")["mean"] == pytest.approx((big / 255).mean(axis=(0, 1)), abs=5e-3)


def test_no_pixels_is_an_error() -> None:
    with pytest.raises(ValueError, match="no pixels"):
        PixelMoments().stats("L")
    with pytest.raises(ValueError, match="3 channels"):
        PixelMoments.of_array(np.zeros((4, 4), np.uint8), rgb=True)
