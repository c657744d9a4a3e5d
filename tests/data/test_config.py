"""DataConfig validation and the dataset facts a run takes from the manifest."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ft_dist.data import DataConfig, describe
from ft_dist.data.transforms import RECIPES
from tests.data.helpers import make_split


def test_defaults_and_batch_size_eval() -> None:
    cfg = DataConfig(root="data/mnist")
    assert cfg.batch_size_per_worker == 128 and cfg.batch_size_eval == 128
    assert DataConfig(root="x", eval_batch_size=7).batch_size_eval == 7


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"root": "x", "batch_size_per_worker": 0}, "batch_size_per_worker"),
        ({"root": "x", "loader_workers": -1}, "loader_workers"),
        ({"root": "x", "recipe": "coco"}, "recipe"),
        ({"root": "x", "colour": True}, "colour"),
        ({"root": "  "}, "data.root is empty"),
        ({"root": "pipe:aws s3 cp s3://b/x -"}, "{path}"),
    ],
)
def test_bad_fields_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        DataConfig(**fields)


def test_recipe_is_a_recipes_key_and_an_unknown_one_lists_them_in_order() -> None:
    assert all(DataConfig(root="x", recipe=name).recipe == name for name in RECIPES)
    assert DataConfig(root="x").recipe is None
    choices = ", ".join(RECIPES)
    with pytest.raises(
        ValidationError, match=f"data.recipe='coco' is unknown; choose one of {choices}"
    ):
        DataConfig(root="x", recipe="coco")


def test_describe_reads_the_manifest(mnist_root) -> None:
    info = describe(DataConfig(root=str(mnist_root)))
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, 28)
    assert info.recipe == "mnist" and info.num_train_samples == 3500
    assert info.classes == tuple(str(d) for d in range(10))


def test_recipe_and_size_overrides(mnist_root) -> None:
    info = describe(DataConfig(root=str(mnist_root), recipe="imagenet"))
    assert (info.in_channels, info.image_size) == (3, 224)
    info = describe(DataConfig(root=str(mnist_root), recipe="imagenet", image_size=64))
    assert info.image_size == 64


def test_manifest_without_recipe_derives_one_at_native_size(tmp_path) -> None:
    make_split(tmp_path, "train", [4], recipe=None)  # 12 px grayscale, no hint
    info = describe(DataConfig(root=str(tmp_path)))
    assert (info.recipe, info.in_channels, info.image_size) == ("derived", 1, 12)


def test_unknown_recipe_hint_is_an_error(tmp_path) -> None:
    make_split(tmp_path, "train", [4], recipe="coco")
    with pytest.raises(ValueError, match="set data.recipe"):
        describe(DataConfig(root=str(tmp_path)))
