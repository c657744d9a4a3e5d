"""Which recipe a run trains with: named by the config, hinted by the manifest, or derived.

Order: ``data.recipe`` if set, else the recipe the shard writer stored in the training
split's manifest (``ft-dist shards mnist|cifar`` or ``--recipe``), else one derived from
the manifest's image facts so that any dataset trains sensibly without flags:

* mode: grayscale when the images have 1-2 channels, else RGB; never RGB-from-gray;
* size: the images' native side (median short side), or ``data.image_size``;
* small images (side < 128): pad-and-random-crop at native size, padding ~1/8 of the side
  for colour and ~1/14 (2 px at 28) for grayscale; horizontal flips for colour photos
  only -- grayscale small images are mostly glyphs (digits, letters), whose mirror image
  is another class or none;
* large images: the ImageNet geometry (RandomResizedCrop + flip, resize/centre-crop eval)
  at min(224, native side);
* normalisation: the per-channel mean/std the shard writer measured on the training
  split (manifest ``pixel_stats``); older manifests fall back to ImageNet's (large RGB)
  or a generic 0.5/0.25.

``recipe_lines(cfg)`` is the one-line explanation (plus warnings) ``ft-dist train`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ft_dist.data.config import DataConfig
from ft_dist.data.manifest import Manifest, read_manifest
from ft_dist.data.pixelstats import model_mode
from ft_dist.data.transforms import RECIPES, Recipe, output_size, preset_recipe

LARGE_MIN_SIDE = 128  # below: CIFAR-like small images; at or above: ImageNet-like
LARGE_MAX_OUTPUT = 224
FAR_RATIO = 2.0  # warn when the model's input side is this far from the native side
_GENERIC_MEAN, _GENERIC_STD = 0.5, 0.25


@dataclass(frozen=True)
class RecipeChoice:
    """The resolved recipe, where it came from, and warnings about the choice."""

    recipe: Recipe
    origin: str  # "data.recipe", "the manifest's hint" or "derived from manifest"
    warnings: tuple[str, ...] = ()

    @property
    def explanation(self) -> str:
        if self.recipe.name == "derived":
            return f"recipe derived from manifest: {self.recipe.summary()}"
        return f"recipe {self.recipe.name} (from {self.origin}): {self.recipe.summary()}"


def resolve_recipe(cfg: DataConfig, manifest: Manifest) -> Recipe:
    """The recipe ``cfg`` trains the training split ``manifest`` with."""
    return choose_recipe(cfg, manifest).recipe


def choose_recipe(cfg: DataConfig, manifest: Manifest | None = None) -> RecipeChoice:
    """Resolve the recipe (see the module doc) and say why; reads the train manifest if
    none is given."""
    manifest = manifest or read_manifest(cfg.root, cfg.train_split)
    name, origin = cfg.recipe, "data.recipe"
    if name is None and manifest.recipe is not None:
        name, origin = manifest.recipe, "the manifest's hint"
    if name is not None and name not in RECIPES:
        raise ValueError(
            f"the {manifest.split!r} manifest under {manifest.root} suggests recipe {name!r}, "
            f"which is not one of {sorted(RECIPES)}; set data.recipe explicitly"
        )
    varying = _varying_sizes(manifest)
    if name is None:
        recipe, origin = derive_recipe(manifest, cfg.image_size), "derived from manifest"
    else:
        size = output_size(name, cfg.image_size, manifest.image_size)
        recipe = preset_recipe(name, size, manifest.image_size, varying=varying)
    return RecipeChoice(recipe, origin, tuple(_warnings(cfg, manifest, recipe, origin)))


def recipe_for_split(recipe: Recipe, manifest: Manifest) -> Recipe:
    """The run's recipe applied to another split (val, test, an OoD set of another size):
    the same output, with a resize first wherever this split's images need one."""
    resize = manifest.image_size != recipe.size or _varying_sizes(manifest)
    return recipe if resize == recipe.resize_first else replace(recipe, resize_first=resize)


def recipe_lines(cfg: DataConfig) -> list[str]:
    """What ``ft-dist train`` prints about the data recipe: the explanation, then warnings."""
    choice = choose_recipe(cfg)
    return [choice.explanation, *(f"warning: {text}" for text in choice.warnings)]


def derive_recipe(manifest: Manifest, image_size: int | None = None) -> Recipe:
    """A recipe that fits the images a manifest describes (see the module doc)."""
    native = manifest.image_size
    mode = model_mode(manifest.channels)
    large = native >= LARGE_MIN_SIDE
    size = image_size or (min(LARGE_MAX_OUTPUT, native) if large else native)
    mean, std, source = _statistics(manifest, mode, large)
    if large:
        crop, padding, eval_crop = "random_resized", 0, "resize_center"
    else:
        fraction = 1 / 8 if mode == "RGB" else 1 / 14
        crop, padding, eval_crop = "pad_random", max(1, round(size * fraction)), "fit"
    return Recipe(
        name="derived",
        mode=mode,
        size=size,
        mean=mean,
        std=std,
        train_crop=crop,
        padding=padding,
        padding_mode="constant",
        flip=mode == "RGB",
        eval_crop=eval_crop,
        resize_first=size != native or _varying_sizes(manifest),
        stats_source=source,
    )


def _statistics(
    manifest: Manifest, mode: str, large: bool
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    stats = manifest.extra.get("pixel_stats")
    channels = 1 if mode == "L" else 3
    if isinstance(stats, dict) and stats.get("mode") == mode:
        mean, std = tuple(stats["mean"]), tuple(stats["std"])
        if len(mean) == len(std) == channels and min(std) > 0:
            return mean, std, f"from {manifest.split} split"
    if large and mode == "RGB":
        spec = RECIPES["imagenet"]
        return spec.mean, spec.std, "ImageNet's (no pixel_stats in the manifest)"
    return (
        (_GENERIC_MEAN,) * channels,
        (_GENERIC_STD,) * channels,
        "generic (no pixel_stats in the manifest: rewrite the shards to measure them)",
    )


def _varying_sizes(manifest: Manifest) -> bool:
    """Images of different sizes or not square: they need resizing to one square side."""
    hint = manifest.extra.get("image_size_hint")
    if not isinstance(hint, dict) or "min" not in hint or "max" not in hint:
        return False
    low, high = hint["min"], hint["max"]
    return low != high or low[0] != low[1]


def _warnings(cfg: DataConfig, manifest: Manifest, recipe: Recipe, origin: str) -> list[str]:
    native, size, out = manifest.image_size, recipe.size, []
    ratio = size / native
    if ratio >= FAR_RATIO or ratio <= 1 / FAR_RATIO:
        source = (
            f"data.image_size={cfg.image_size}"
            if cfg.image_size is not None
            else f"recipe {recipe.name}'s default"
        )
        effect = (
            f"each image is upsampled and costs ~{ratio**2:.0f}x the compute of native size "
            "for no extra detail"
            if ratio > 1
            else "detail is thrown away"
        )
        out.append(
            f"the model's input side is {size} px ({source}) but the images' native side is "
            f"{native} px ({manifest.split!r} manifest under {manifest.root}): {effect}; "
            "remove data.image_size (and data.recipe) to train at native size"
        )
    images = model_mode(manifest.channels)
    if origin != "derived from manifest" and images != recipe.mode:
        out.append(
            f"recipe {recipe.name} feeds {recipe.mode} images but the shards hold "
            f"{manifest.image_mode} images; remove data.recipe to derive one that fits"
        )
    return out
