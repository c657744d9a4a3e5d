"""data.decode_device: the batched torchvision decode path, its errors, and the decode check."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ft_dist.bench.gpu_checks import SIZES
from ft_dist.bench.gpu_decode import check_decode
from ft_dist.data.decoding import BatchDecoder, decode_tensors
from ft_dist.data.reader import DataError
from ft_dist.data.transforms import build_transform


def _encoded(seed: int, fmt: str, mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def _items() -> list:
    formats = ["JPEG", "JPEG", "PNG", "JPEG"]
    return [
        ("shard.tar", f"k{i}", {"jpg" if f == "JPEG" else "png": _encoded(i, f), "cls": b"1"})
        for i, f in enumerate(formats)
    ]


def _decoder(device: str, train: bool, mode: str = "RGB", skip_corrupt: bool = False):
    recipe = "imagenet" if mode == "RGB" else "mnist"
    transform = build_transform(recipe, train=train, size=48, native_size=48)
    return BatchDecoder(mode, transform, 4, True, skip_corrupt, device=device)


@pytest.mark.parametrize("train", [False, True])
def test_tensor_path_matches_the_pil_path(train: bool) -> None:
    """The device path run on the CPU ("cpu:0" takes it): same crops, near-equal pixels."""
    pil_images, pil_labels = _decoder("cpu", train).decode(_items(), seed=5)
    images, labels = _decoder("cpu:0", train).decode(_items(), seed=5)
    assert images.shape == pil_images.shape == (4, 3, 48, 48)
    assert torch.equal(labels, pil_labels)
    difference = (images - pil_images).abs()
    assert float(difference.mean()) < 0.01 and float(difference.max()) < 0.1


def test_grayscale_mode_and_unreadable_images() -> None:
    decoded = decode_tensors(
        [{"jpg": _encoded(0, "JPEG")}, {"jpg": b"\xff\xd8\xffnope"}, {}], "L", "cpu"
    )
    assert decoded[0].shape == (1, 70, 90) and decoded[0].dtype == torch.uint8
    assert isinstance(decoded[1], Exception) and isinstance(decoded[2], DataError)


def test_corrupt_samples_are_named_or_replaced() -> None:
    items = [*_items(), ("shard.tar", "bad", {"jpg": b"\xff\xd8\xff\x00broken", "cls": b"2"})]
    with pytest.raises(DataError, match="shard shard.tar sample bad"):
        _decoder("cpu:0", train=False).decode(items)
    decoder = _decoder("cpu:0", train=False, skip_corrupt=True)
    images, labels = decoder.decode(items)
    assert images.shape[0] == 5 and decoder.skipped == 1
    assert torch.equal(images[4], images[3]) and labels[4] == labels[3]


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_decode_check_on_cpu_refuses_cuda_clearly(tmp_path: Path) -> None:
    result = check_decode(torch.device("cpu"), SIZES["tiny"], tmp_path)
    assert result["passed"] is True, result
    assert result["cpu_images_per_s"] > 0
    assert "data.decode_device=cuda" in result["cuda_config_error"]
    assert "no CUDA device" in result["cuda_config_error"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_decoder_yields_gpu_batches() -> None:
    images, labels = _decoder("cuda", train=True).decode(_items(), seed=1)
    assert images.is_cuda and images.shape == (4, 3, 48, 48) and not labels.is_cuda


def test_evaluation_streams_keep_decoding_on_the_cpu(tmp_path: Path) -> None:
    from ft_dist.bench.gpu_decode import stream_config, write_jpeg_shards
    from ft_dist.data.evaluation import EvalStream

    root = write_jpeg_shards(tmp_path, 32)
    cfg = stream_config(root, "cuda", 0, 8)
    assert EvalStream(cfg, split="train").decoder.device == "cpu"
