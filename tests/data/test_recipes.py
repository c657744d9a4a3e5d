"""Recipe choice: manifest in -> recipe out (named, hinted or derived), with warnings."""

from __future__ import annotations

from typing import Any

import pytest

from ft_dist.data import DataConfig
from ft_dist.data.manifest import Manifest, ShardInfo
from ft_dist.data.recipes import choose_recipe, derive_recipe, recipe_for_split
from ft_dist.data.transforms import recipe_transform

SHARD = (ShardInfo("shard-000000.tar", 10, 100, "0" * 64, 0, 1),)


def manifest(
    side: int, mode: str = "L", *, stats: dict | None = None, recipe: str | None = None, **hint
) -> Manifest:
    extra: dict[str, Any] = {"image_size_hint": hint or {"min": [side, side], "max": [side, side]}}
    if stats is not None:
        extra["pixel_stats"] = stats
    channels = 1 if mode == "L" else 3
    return Manifest("/data/x", "train", 10, ("a", "b"), True, mode, channels, side, SHARD,
                    recipe, extra)  # fmt: skip


MNIST_STATS = {"mode": "L", "mean": [0.1307], "std": [0.3081], "num_pixels": 1}
RGB_STATS = {"mode": "RGB", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.21, 0.22], "num_pixels": 1}


def test_small_grayscale_trains_at_native_size_without_flips() -> None:
    recipe = derive_recipe(manifest(28, stats=MNIST_STATS))
    assert (recipe.mode, recipe.size, recipe.channels) == ("L", 28, 1)
    assert (recipe.train_crop, recipe.padding, recipe.flip) == ("pad_random", 2, False)
    assert (recipe.mean, recipe.std, recipe.resize_first) == ((0.1307,), (0.3081,), False)
    choice = choose_recipe(DataConfig(root="/data/x"), manifest(28, stats=MNIST_STATS))
    assert choice.explanation == (
        "recipe derived from manifest: L 28x28, normalisation from train split "
        "(mean 0.13, std 0.31), augmentation: random crop 28 pad 2, no flip"
    )
    assert choice.warnings == ()


def test_small_colour_images_get_cifar_style_augmentation() -> None:
    recipe = derive_recipe(manifest(32, "RGB", stats=RGB_STATS))
    assert (recipe.mode, recipe.size, recipe.padding, recipe.flip) == ("RGB", 32, 4, True)
    assert (recipe.eval_crop, recipe.mean) == ("fit", (0.4, 0.5, 0.6))


def test_large_photos_get_the_imagenet_geometry() -> None:
    varying = {"min": [200, 180], "max": [500, 375]}
    recipe = derive_recipe(manifest(300, "RGB", stats=RGB_STATS, **varying))
    assert (recipe.train_crop, recipe.eval_crop, recipe.flip) == (
        "random_resized",
        "resize_center",
        True,
    )
    assert recipe.size == 224 and recipe.std == (0.2, 0.21, 0.22)
    assert derive_recipe(manifest(160, "RGB", stats=RGB_STATS)).size == 160


def test_missing_statistics_fall_back_and_say_so() -> None:
    large = choose_recipe(DataConfig(root="x"), manifest(256, "RGB"))
    assert large.recipe.mean == (0.485, 0.456, 0.406)
    assert "ImageNet's (no pixel_stats" in large.explanation
    small = derive_recipe(manifest(28))
    assert (small.mean, small.std) == ((0.5,), (0.25,))
    # Statistics measured in another mode than the one fed are not used.
    assert derive_recipe(manifest(32, "RGB", stats=MNIST_STATS)).mean == (0.5, 0.5, 0.5)


def test_varying_small_images_are_resized_to_the_median_side() -> None:
    recipe = derive_recipe(manifest(30, **{"min": [20, 24], "max": [40, 40]}))
    assert recipe.resize_first and recipe.size == 30


def test_named_recipes_win_and_cifar100_has_its_own_statistics() -> None:
    hinted = choose_recipe(DataConfig(root="x"), manifest(32, "RGB", recipe="cifar100"))
    assert hinted.recipe.mean == (0.5071, 0.4865, 0.4409)
    assert hinted.recipe.std == (0.2673, 0.2564, 0.2762)
    assert hinted.explanation.startswith("recipe cifar100 (from the manifest's hint): RGB 32x32")
    named = choose_recipe(DataConfig(root="x", recipe="cifar"), manifest(32, "RGB"))
    assert named.recipe.mean == (0.4914, 0.4822, 0.4465) and named.origin == "data.recipe"


def test_cifar_transforms_are_the_official_codes() -> None:
    from torchvision.transforms import v2

    # sparselearning/utils.py: CIFAR-10 reflect-pads 4 px and uses std (0.2023, 0.1994,
    # 0.2010); CIFAR-100 zero-pads 4 px. Both crop 32 and flip; test images are untouched.
    for name, padding_mode, std in [
        ("cifar", "reflect", (0.2023, 0.1994, 0.2010)),
        ("cifar100", "constant", (0.2673, 0.2564, 0.2762)),
    ]:
        recipe = choose_recipe(DataConfig(root="x", recipe=name), manifest(32, "RGB")).recipe
        steps = recipe_transform(recipe, train=True).transforms
        crop, flip, *_, normalize = steps
        assert isinstance(crop, v2.RandomCrop) and isinstance(flip, v2.RandomHorizontalFlip)
        assert (crop.size, crop.padding, crop.padding_mode) == ((32, 32), [4] * 4, padding_mode)
        assert tuple(normalize.std) == std
        evaluation = recipe_transform(recipe, train=False).transforms
        assert [type(step) for step in evaluation] == [v2.ToImage, v2.ToDtype, v2.Normalize]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"image_size": 224}, "224 px (data.image_size=224) but the images' native side is 28 px"),
        ({"recipe": "imagenet"}, "224 px (recipe imagenet's default) but the images' native"),
        ({"image_size": 8}, "detail is thrown away"),
    ],
)
def test_far_input_size_warns_naming_both(config: dict, expected: str) -> None:
    choice = choose_recipe(DataConfig(root="x", **config), manifest(28, stats=MNIST_STATS))
    assert any(expected in text for text in choice.warnings), choice.warnings


def test_near_sizes_and_fitting_modes_do_not_warn() -> None:
    assert choose_recipe(DataConfig(root="x", image_size=32), manifest(28)).warnings == ()
    imagenet_on_gray = choose_recipe(DataConfig(root="x", recipe="imagenet"), manifest(224))
    assert imagenet_on_gray.warnings == (
        "recipe imagenet feeds RGB images but the shards hold L images; remove data.recipe "
        "to derive one that fits",
    )


def test_other_splits_are_resized_to_the_runs_side() -> None:
    recipe = derive_recipe(manifest(28, stats=MNIST_STATS))
    assert recipe_for_split(recipe, manifest(28)) is recipe
    ood = recipe_for_split(recipe, manifest(40))
    assert ood.resize_first and ood.size == 28 and ood.mean == recipe.mean


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_zero_pad_crop_is_torchvisions_pad_then_crop(mode: str) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from ft_dist.data.crops import ZeroPadRandomCrop

    shape = (28, 28) if mode == "L" else (28, 28, 3)
    pixels = np.random.default_rng(0).integers(1, 256, size=shape, dtype=np.uint8)
    image = Image.fromarray(pixels, mode=mode)
    ours, reference = ZeroPadRandomCrop(28, padding=2), v2.RandomCrop(28, padding=2)
    shifted = 0
    for seed in range(40):
        for inpt in (image, v2.functional.pil_to_tensor(image)):
            torch.manual_seed(seed)
            expected = np.asarray(reference(inpt))
            torch.manual_seed(seed)
            got = np.asarray(ours(inpt))
            assert np.array_equal(got, expected), seed
            shifted += int((got == 0).any())  # zero border where the crop left the image
    assert shifted > 40
