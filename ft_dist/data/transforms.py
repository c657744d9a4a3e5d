"""torchvision ``transforms.v2`` pipelines from a resolved recipe.

A ``Recipe`` fixes everything the model sees: the image mode (L or RGB), the output side,
the training augmentation, the deterministic evaluation geometry and the normalisation.
It is either one of the named ``RECIPES`` (the published settings for MNIST, CIFAR-10,
CIFAR-100, ImageNet) or derived from a split's manifest (``ft_dist.data.recipes``).
Evaluation and OoD inputs use the same normalisation as training (SPEC §7);
``normalize=False`` stops before it, for corruptions that act on raw [0, 1] pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

TrainCrop = Literal["random_resized", "pad_random", "none"]
EvalCrop = Literal["resize_center", "fit"]


@dataclass(frozen=True)
class RecipeSpec:
    """Static facts of a named recipe: PIL mode, default output side, normalisation, augmentation."""

    mode: str
    default_size: int | None  # None: the dataset's own side (manifest image_size)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_crop: TrainCrop = "none"
    padding: int = 0
    padding_mode: str = "constant"  # torchvision RandomCrop: constant (zeros) or reflect
    flip: bool = False
    eval_crop: EvalCrop = "fit"
    label: str = ""  # whose statistics, for explanations

    @property
    def channels(self) -> int:
        return len(self.mean)


# As the official FreeTickets training code (sparselearning/utils.py) has them: CIFAR-10
# with the widely copied std (0.2023, 0.1994, 0.2010) and reflect padding, CIFAR-100 with
# its own statistics and zero padding; both random crop 32 pad 4 + horizontal flip.
RECIPES: dict[str, RecipeSpec] = {
    "mnist": RecipeSpec("L", None, (0.1307,), (0.3081,), label="MNIST"),
    "cifar": RecipeSpec(
        mode="RGB",
        default_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        train_crop="pad_random",
        padding=4,
        padding_mode="reflect",
        flip=True,
        label="CIFAR-10",
    ),
    "cifar100": RecipeSpec(
        mode="RGB",
        default_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        train_crop="pad_random",
        padding=4,
        flip=True,
        label="CIFAR-100",
    ),
    "imagenet": RecipeSpec(
        mode="RGB",
        default_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        train_crop="random_resized",
        flip=True,
        eval_crop="resize_center",
        label="ImageNet",
    ),
}


@dataclass(frozen=True)
class Recipe:
    """A recipe resolved for one dataset: every fact ``recipe_transform`` needs."""

    name: str  # a RECIPES key, or "derived"
    mode: str  # PIL mode the model sees: "L" or "RGB"
    size: int  # side of the square output tensors
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_crop: TrainCrop
    padding: int
    padding_mode: str  # "constant" (zeros) or "reflect"
    flip: bool
    eval_crop: EvalCrop
    resize_first: bool  # images differ from `size` (or vary): resize + centre-crop first
    stats_source: str  # where mean/std come from, for the explanation line

    @property
    def channels(self) -> int:
        return len(self.mean)

    def summary(self) -> str:
        """``"L 28x28, normalisation ... (mean 0.13, std 0.31), augmentation: ..."``."""
        mean = " ".join(f"{value:.2f}" for value in self.mean)
        std = " ".join(f"{value:.2f}" for value in self.std)
        return (
            f"{self.mode} {self.size}x{self.size}, normalisation {self.stats_source} "
            f"(mean {mean}, std {std}), augmentation: {self._augmentation()}"
        )

    def _augmentation(self) -> str:
        flip = "horizontal flip" if self.flip else "no flip"
        if self.train_crop == "random_resized":
            return f"random resized crop {self.size}, {flip}"
        if self.train_crop == "pad_random":
            mode = "" if self.padding_mode == "constant" else f" ({self.padding_mode})"
            return f"random crop {self.size} pad {self.padding}{mode}, {flip}"
        return "none" if not self.flip else flip


def preset_recipe(name: str, size: int, native_size: int, *, varying: bool = False) -> Recipe:
    """A named recipe at output side ``size`` for images of side ``native_size``."""
    spec = RECIPES[name]
    return Recipe(
        name=name,
        mode=spec.mode,
        size=size,
        mean=spec.mean,
        std=spec.std,
        train_crop=spec.train_crop,
        padding=spec.padding,
        padding_mode=spec.padding_mode,
        flip=spec.flip,
        eval_crop=spec.eval_crop,
        resize_first=varying or native_size != size,
        stats_source=f"{spec.label}'s",
    )


def output_size(recipe: str, image_size: int | None, native_size: int) -> int:
    """Side of the square tensors a named recipe yields: config value, default, or native."""
    if image_size is not None:
        return image_size
    return RECIPES[recipe].default_size or native_size


def build_transform(
    recipe: str, *, train: bool, size: int, native_size: int, normalize: bool = True
) -> Callable[[object], object]:
    """The transform of the named ``recipe`` (see ``recipe_transform``)."""
    return recipe_transform(
        preset_recipe(recipe, size, native_size), train=train, normalize=normalize
    )


def recipe_transform(
    recipe: Recipe, *, train: bool, normalize: bool = True
) -> Callable[[object], object]:
    """PIL image (already in the recipe's mode) -> float32 tensor [C, size, size].

    * ``random_resized`` (ImageNet): train RandomResizedCrop(size) (+ flip); eval
      ``resize_center``: Resize(size / 0.875) + CenterCrop(size) (256 -> 224).
    * ``pad_random`` (CIFAR, small images): train RandomCrop(size, padding) (+ flip).
    * ``none``: no augmentation.
    Images whose side differs from ``size`` (or varies) are resized + centre-cropped to
    ``size`` first, except under ImageNet's geometry, which crops from the full image.
    Output is normalised with the recipe's mean/std, or left in [0, 1] with
    ``normalize=False``.
    """
    import torch
    from torchvision.transforms import v2

    from ft_dist.data.crops import ZeroPadRandomCrop

    size, steps = recipe.size, []
    if recipe.train_crop == "random_resized" and train:
        steps.append(v2.RandomResizedCrop(size, antialias=True))
    elif recipe.eval_crop == "resize_center" and not train:
        steps += [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    elif recipe.resize_first:
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    if recipe.train_crop == "pad_random" and train:
        crop = ZeroPadRandomCrop if recipe.padding_mode == "constant" else v2.RandomCrop
        steps.append(crop(size, padding=recipe.padding, padding_mode=recipe.padding_mode))
    if recipe.flip and train:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(v2.Normalize(list(recipe.mean), list(recipe.std)))
    return v2.Compose(steps)


def split_per_batch(transform: Callable[[object], object]) -> tuple[Callable, Callable | None]:
    """``(per sample, per batch)`` halves of a ``recipe_transform``: the steps after
    ``ToImage`` (``ToDtype``, ``Normalize``) are elementwise and draw no random numbers,
    so they give the same floats run once on the stacked uint8 batch [B, C, H, W] -- at a
    fraction of the cost of running v2's dispatch per 28-32 px image. ``None``: no such
    tail (the whole transform stays per sample)."""
    from torchvision.transforms import v2

    steps = list(getattr(transform, "transforms", ()))
    cut = next((i + 1 for i, step in enumerate(steps) if isinstance(step, v2.ToImage)), None)
    tail = steps[cut:] if cut is not None else []
    if not tail or not all(isinstance(step, v2.ToDtype | v2.Normalize) for step in tail):
        return transform, None
    return v2.Compose(steps[:cut]), v2.Compose(tail)


def takes_tensors(per_sample: Callable[[object], object]) -> bool:
    """Whether the per-sample half gives the same pixels on a uint8 tensor as on a PIL image:
    only ``ToImage``, crops padded with zeros or by reflection, and flips (they move pixels,
    never blend them; tests/data/test_decoding.py compares both paths), with the same
    random draws (the parameters come from the image's size alone)."""
    from torchvision.transforms import v2

    steps = list(getattr(per_sample, "transforms", ()))

    def exact(step: object) -> bool:
        if isinstance(step, v2.RandomCrop):  # ZeroPadRandomCrop included
            zeros = step.padding_mode == "constant" and step.fill in (0, {})
            return (zeros or step.padding_mode == "reflect") and not step.pad_if_needed
        return isinstance(step, v2.ToImage | v2.RandomHorizontalFlip)

    return bool(steps) and all(exact(step) for step in steps)


def tensor_steps(per_sample: Callable[[object], object]) -> Callable[[object], object] | None:
    """The per-sample steps a uint8 tensor needs (``ToImage`` leaves it as it is); ``None``
    when there are none."""
    from torchvision.transforms import v2

    steps = [s for s in getattr(per_sample, "transforms", ()) if not isinstance(s, v2.ToImage)]
    return v2.Compose(steps) if steps else None
