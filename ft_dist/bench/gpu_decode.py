"""`ft-dist bench gpu` check: JPEG decode + augment on the GPU vs the CPU, in the real stream.

ImageNet-like JPEGs (random 400x350 crops of real photos, as `ft-dist bench data` makes)
are packed into shards; the training stream (`TrainStream`, imagenet recipe, 224 px
RandomResizedCrop + flip) then runs one warm-up and one timed epoch with
``data.decode_device=cpu`` (PIL in loader workers, batches pinned and copied to the GPU)
and with ``data.decode_device=cuda`` (batched nvJPEG + transforms on the GPU, in the
process). Both deliver normalised batches on the GPU, so images/s compare like for like.
The two decoders also decode the same samples with the same seed: same crops, pixels equal
up to decoder/resampling rounding (mean |difference| is reported and bounded).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

MAX_MEAN_ABS_DIFF = 0.1  # normalised units; nvJPEG vs libjpeg + tensor vs PIL resize


def write_jpeg_shards(root: Path, count: int) -> Path:
    from ft_dist.bench.data import write_jpegs
    from ft_dist.data.imagefolder import ImageFolderJob, write_imagefolder

    write_jpegs(root / "jpegs", count)
    job = ImageFolderJob(
        src=root / "jpegs", out=root / "shards", shard_size=max(1, count // 32), progress=False
    )
    write_imagefolder(job)
    return root / "shards"


def stream_config(root: Path, decode_device: str, workers: int, batch_size: int):
    import torch

    from ft_dist.data.config import DataConfig

    return DataConfig(
        root=str(root),
        recipe="imagenet",
        batch_size_per_worker=batch_size,
        loader_workers=workers,
        pin_memory=decode_device == "cpu" and torch.cuda.is_available(),
        decode_device=decode_device,
        verify="size",
        val_split=None,
        test_split=None,
    )


def stream_images_per_s(cfg, device) -> float:
    """Images/s of the second epoch (the first starts workers and warms the decoder up)."""
    import torch

    from ft_dist.data.pipeline import TrainStream

    stream = TrainStream(cfg, rank=0, world_size=1, seed=0)
    for epoch in (0, 1):
        start, count = time.perf_counter(), 0
        for images, labels in stream.epoch(epoch):
            images = images.to(device, non_blocking=True)
            count += int(labels.numel())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return count / seconds


def decoder_difference(root: Path, device, batch_size: int) -> dict[str, Any]:
    """Same samples, same seed, both decoders: where the batch lands and how close it is."""
    from ft_dist.data.decoding import BatchDecoder, describe
    from ft_dist.data.manifest import read_manifest
    from ft_dist.data.reader import iter_shard

    cpu_cfg = stream_config(root, "cpu", 0, batch_size)
    gpu_cfg = stream_config(root, "cuda", 0, batch_size)
    info, manifest = describe(cpu_cfg), read_manifest(root, "train")
    url, shard = manifest.shard_url(0), manifest.shards[0]
    items = [(url, key, sample) for _, key, sample in iter_shard(url, shard)][:batch_size]
    on_cpu, _ = BatchDecoder.create(cpu_cfg, info, manifest, train=True).decode(items, seed=1)
    on_gpu, _ = BatchDecoder.create(gpu_cfg, info, manifest, train=True).decode(items, seed=1)
    difference = (on_cpu.to(device) - on_gpu).abs()
    return {
        "batch_device": str(on_gpu.device),
        "batch_shape": list(on_gpu.shape),
        "mean_abs_diff": float(difference.mean()),
        "max_abs_diff": float(difference.max()),
    }


def cuda_refused_without_gpu(root: Path) -> str | None:
    """On a machine without CUDA, data.decode_device=cuda must be a clear error."""
    from ft_dist.data.pipeline import TrainStream

    try:
        TrainStream(stream_config(root, "cuda", 0, 8), rank=0, world_size=1)
    except ValueError as error:
        return str(error)
    return None


def check_decode(device, sizes, workdir: Path) -> dict[str, Any]:
    root = write_jpeg_shards(workdir, sizes.decode_images)
    workers = sizes.decode_workers or min(16, os.cpu_count() or 1)
    batch = sizes.decode_batch_size
    result: dict[str, Any] = {"images": sizes.decode_images, "cpu_loader_workers": workers}
    result["cpu_images_per_s"] = stream_images_per_s(
        stream_config(root, "cpu", workers, batch), device
    )
    if device.type != "cuda":
        error = cuda_refused_without_gpu(root)
        passed = error is not None and "data.decode_device" in error
        return {
            **result,
            "cuda_config_error": error,
            "passed": passed,
            "summary": f"cpu stream {result['cpu_images_per_s']:.0f} img/s ({workers} workers); "
            f"decode_device=cuda {'refused clearly' if passed else 'NOT refused'} without a GPU",
        }
    result["cuda_images_per_s"] = stream_images_per_s(stream_config(root, "cuda", 0, batch), device)
    result.update(decoder_difference(root, device, batch))
    ratio = result["cuda_images_per_s"] / result["cpu_images_per_s"]
    faster = "cuda" if ratio > 1 else "cpu"
    passed = result["batch_device"].startswith("cuda") and (
        result["mean_abs_diff"] < MAX_MEAN_ABS_DIFF
    )
    summary = (
        f"cuda {result['cuda_images_per_s']:.0f} img/s vs cpu {result['cpu_images_per_s']:.0f} "
        f"img/s ({workers} workers): x{ratio:.2f}, use data.decode_device={faster}; "
        f"mean |cuda - cpu| {result['mean_abs_diff']:.4f}"
    )
    return {
        **result,
        "cuda_vs_cpu": ratio,
        "faster": faster,
        "passed": passed,
        "summary": summary,
    }
