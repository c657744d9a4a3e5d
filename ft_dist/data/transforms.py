"""torchvision ``transforms.v2`` recipes per dataset family.

A recipe fixes the image mode the model sees (grayscale for MNIST, RGB otherwise), the
augmentation for training, the deterministic resize/crop for evaluation, and the
normalisation statistics. Evaluation and OoD inputs use the same normalisation as
training (SPEC §7).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RecipeSpec:
    """Static facts of a recipe: PIL mode, default output side, normalisation."""

    mode: str
    default_size: int | None  # None: the dataset's own side (manifest image_size)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.mean)


RECIPES: dict[str, RecipeSpec] = {
    "mnist": RecipeSpec("L", None, (0.1307,), (0.3081,)),
    "cifar": RecipeSpec("RGB", 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": RecipeSpec("RGB", 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def output_size(recipe: str, image_size: int | None, native_size: int) -> int:
    """Side of the square tensors a recipe yields: config value, recipe default, or native."""
    if image_size is not None:
        return image_size
    return RECIPES[recipe].default_size or native_size


def build_transform(
    recipe: str, *, train: bool, size: int, native_size: int
) -> Callable[[object], object]:
    """PIL image (already in the recipe's mode) -> normalised float32 tensor [C, size, size].

    * imagenet: train RandomResizedCrop(size) + horizontal flip; eval Resize(size/0.875)
      + CenterCrop(size) (256 -> 224 at the default size);
    * cifar: train RandomCrop(size, padding=4) + flip; eval no augmentation;
    * mnist: no augmentation.
    Sources whose native side differs from ``size`` (cifar/mnist) are resized first.
    """
    import torch
    from torchvision.transforms import v2

    spec = RECIPES[recipe]
    steps: list = []
    if recipe == "imagenet":
        if train:
            steps += [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    else:
        if native_size != size:
            steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        if recipe == "cifar" and train:
            steps += [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()]
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ]
    return v2.Compose(steps)
