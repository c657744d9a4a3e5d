"""BatchDecoder's fast CPU path gives the floats of the plain one: each sample through the
whole recipe transform after PIL, under the same seed. The fast path decodes 8-bit PNGs
in their own mode with torchvision, runs geometry per sample and dtype + normalisation
once per batch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ft_dist.data.decoding import BatchDecoder
from ft_dist.data.reader import decode_image, decode_png_tensor
from ft_dist.data.transforms import preset_recipe, recipe_transform, takes_tensors


def encoded(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def samples(kind: str, count: int, side: int, seed: int = 0) -> list[tuple[str, str, dict]]:
    """(url, key, sample) items with PNG/JPEG images of ``kind``."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        if kind == "L":
            data = encoded(rng.integers(0, 256, (side, side), dtype=np.uint8))
        elif kind == "RGB":
            data = encoded(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        elif kind == "palette":
            data = encoded(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), mode="P")
        else:  # jpeg
            data = encoded(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), fmt="JPEG")
        ext = "jpg" if kind == "jpeg" else "png"
        items.append(("shard.tar", f"{index:04d}", {ext: data, "cls": str(index % 10).encode()}))
    return items


def reference(transform, items, mode: str, seed: int) -> torch.Tensor:
    """The plain path: PIL, then the whole transform per sample."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        images = [transform(decode_image(sample, mode)) for _, _, sample in items]
    return torch.stack([image.as_subclass(torch.Tensor) for image in images])


# (recipe, image kind, native side, output side): MNIST as bundled, CIFAR-10's reflect-padded
# and CIFAR-100's zero-padded crops and flips on RGB PNGs (the tensor path), palette PNGs
# and JPEGs (PIL), a resize first (PIL geometry), ImageNet's random resized crop (PIL).
CASES = [
    ("mnist", "L", 28, 28),
    ("cifar", "RGB", 32, 32),
    ("cifar100", "RGB", 32, 32),
    ("cifar", "palette", 32, 32),
    ("cifar", "jpeg", 32, 32),
    ("cifar", "RGB", 40, 32),
    ("imagenet", "RGB", 48, 32),
]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("recipe_name", "kind", "native", "size"), CASES)
def test_fast_path_gives_the_plain_paths_floats(recipe_name, kind, native, size, train) -> None:
    recipe = preset_recipe(recipe_name, size, native)
    transform = recipe_transform(recipe, train=train)
    decoder = BatchDecoder(recipe.mode, transform, 10, labeled=True, skip_corrupt=False)
    items = samples(kind, 16, native)
    for seed in (0, 1, 2):
        images, labels = decoder.decode(items, seed=seed)
        assert type(images) is torch.Tensor and images.dtype == torch.float32
        assert torch.equal(images, reference(transform, items, recipe.mode, seed))
        assert labels.tolist() == [i % 10 for i in range(16)]


def test_the_tensor_path_is_taken_where_exact_and_only_there() -> None:
    for name in ("cifar", "cifar100", "mnist"):
        recipe = preset_recipe(name, 32, 32)
        decoder = BatchDecoder(recipe.mode, recipe_transform(recipe, train=True), 10, True, False)
        assert decoder.png_tensors and decoder.per_batch is not None
    resized = BatchDecoder("RGB", recipe_transform(preset_recipe("cifar", 32, 40), train=True),
                           10, labeled=True, skip_corrupt=False)  # fmt: skip
    assert not resized.png_tensors and not takes_tensors(resized.per_sample)
    imagenet = recipe_transform(preset_recipe("imagenet", 32, 48), train=True)
    assert not BatchDecoder("RGB", imagenet, 10, True, False).png_tensors


@pytest.mark.parametrize(
    ("kind", "mode", "tensor"),
    [("L", "L", True), ("RGB", "RGB", True), ("L", "RGB", False), ("RGB", "L", False),
     ("palette", "RGB", False), ("jpeg", "RGB", False)],
)  # fmt: skip
def test_only_8_bit_pngs_in_the_wanted_mode_skip_pil(kind: str, mode: str, tensor: bool) -> None:
    ((_, _, sample),) = samples(kind, 1, 8)
    decoded = decode_png_tensor(sample, mode)
    assert (decoded is not None) == tensor
    if tensor:
        pil = np.array(decode_image(sample, mode))
        assert torch.equal(decoded, torch.from_numpy(pil.reshape(8, 8, -1)).permute(2, 0, 1))


def test_a_damaged_png_is_left_to_pil_which_names_the_problem() -> None:
    ((_, _, sample),) = samples("L", 1, 8)
    sample["png"] = sample["png"][:40]  # the header intact, the data cut
    assert decode_png_tensor(sample, "L") is None
    decoder = BatchDecoder("L", recipe_transform(preset_recipe("mnist", 8, 8), train=False),
                           10, labeled=True, skip_corrupt=False)  # fmt: skip
    with pytest.raises(Exception, match="shard.tar sample 0000: cannot decode its image"):
        decoder.decode([("shard.tar", "0000", sample)])
