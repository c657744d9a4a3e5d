"""The world-size independent order of a fixed global batch (elastic training): a resume at
optimizer step k on another world size reads every sample of the epoch once, none twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ft_dist.data.pipeline import TrainStream
from ft_dist.data.plan import mix_seed
from tests.data.helpers import make_split
from tests.data.test_pipeline import UNEVEN, config

GLOBAL = 32  # 8 per micro-batch: accumulation 4 at 1 rank, 2 at 2 ranks, 1 at 4 ranks


@pytest.fixture
def uneven(tmp_path: Path) -> Path:
    make_split(tmp_path, "train", UNEVEN, num_classes=3)  # 110 samples: 3 steps of 32
    return tmp_path


def step_keys(root: Path, world_size: int, start: int, epoch: int = 0, **fields) -> list[list]:
    """Per optimizer step from ``start``, the sample ids the whole world consumes, from the
    stream's own accounting (every rank, every loader role)."""
    cfg = config(root, shuffle_buffer=64, **fields)
    steps: dict[int, list] = {}
    for rank in range(world_size):
        stream = TrainStream(cfg, rank=rank, world_size=world_size, global_batch=GLOBAL)
        accum = GLOBAL // (world_size * cfg.batch_size_per_worker)
        source = stream.epoch(epoch, start_step=start * accum).source
        for role in range(stream.num_roles):
            for index, items in source.raw_batches(role):
                steps.setdefault(index // accum, []).extend((url, key) for url, key, _ in items)
    return [steps[k] for k in sorted(steps)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 4), (4, 2)])
def test_resume_on_another_world_size_reads_each_sample_once(
    uneven: Path, before: int, after: int, workers: int
) -> None:
    epoch = [sorted(keys) for keys in step_keys(uneven, 1, start=0, loader_workers=workers)]
    assert len(epoch) == 110 // GLOBAL and all(len(keys) == GLOBAL for keys in epoch)
    assert len({key for keys in epoch for key in keys}) == 3 * GLOBAL  # no sample twice
    for k in range(1, len(epoch)):  # world size `before` for steps < k, then `after`
        first = step_keys(uneven, before, start=0, loader_workers=workers)[:k]
        rest = step_keys(uneven, after, start=k, loader_workers=workers)
        resumed = [sorted(keys) for keys in first + rest]
        assert resumed == epoch  # the same global batch at each step: same samples, once


def test_epochs_and_loader_roles(uneven: Path) -> None:
    one = step_keys(uneven, 2, start=0, epoch=0)
    # Other loader workers lay the lanes out differently (a resume keeps data.loader_workers)
    two = step_keys(uneven, 2, start=0, epoch=0, loader_workers=2)
    assert two != one and len({key for keys in two for key in keys}) == 3 * GLOBAL
    assert step_keys(uneven, 4, start=0, epoch=0, loader_workers=2) == two
    assert sorted(map(sorted, step_keys(uneven, 1, start=0, epoch=1))) != sorted(map(sorted, one))


def rank_bytes(root: Path, world_size: int, start: int, **fields) -> list[int]:
    """Bytes each rank's readers (all its loader roles) take from the shards from optimizer
    step ``start`` to the epoch's end, by the stream's own counter."""
    cfg = config(root, shuffle_buffer=16, **fields)
    read = []
    for rank in range(world_size):
        stream = TrainStream(cfg, rank=rank, world_size=world_size, global_batch=GLOBAL)
        accum = GLOBAL // (world_size * cfg.batch_size_per_worker)
        source = stream.epoch(0, start_step=start * accum).source
        for role in range(stream.num_roles):
            for _ in source.raw_batches(role):
                pass
        read.append(source.bytes_read[0])
    return read


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(("world_size", "start"), [(1, 0), (2, 0), (4, 0), (4, 3), (2, 5)])
def test_each_rank_reads_its_share_plus_one_shard_per_lane(
    tmp_path: Path, world_size: int, start: int, workers: int
) -> None:
    """Before: every rank (and loader worker) read every shard from the resume point on.
    Now a rank reads at most 1/N of the epoch's bytes plus one shard per lane it reads
    (the part of a shard before a lane's start): a lane per loader worker at full size."""
    make_split(tmp_path, "train", [16] * 16, num_classes=3)  # 256 samples: 8 steps of 32
    shards = sorted((tmp_path / "train").glob("*.tar"))
    epoch_bytes, shard_bytes = (
        sum(p.stat().st_size for p in shards),
        max(p.stat().st_size for p in shards),
    )
    read = rank_bytes(tmp_path, world_size, start, loader_workers=workers)
    lanes = GLOBAL // (world_size * 8) * max(1, workers)  # columns a rank owns x residues
    for rank_read in read:
        assert rank_read <= epoch_bytes / world_size + lanes * shard_bytes, (read, epoch_bytes)
    if start == 0:  # the ranks together read the epoch about once (not the tars' padding)
        assert epoch_bytes * 0.75 <= sum(read) <= epoch_bytes + len(read) * lanes * shard_bytes


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_the_accounted_batches(uneven: Path, workers: int) -> None:
    cfg = config(uneven, shuffle_buffer=64, loader_workers=workers)
    stream = TrainStream(cfg, rank=1, world_size=2, global_batch=GLOBAL)
    assert stream.steps_per_epoch == 3 * 2  # 3 optimizer steps x 2 micro-batches
    loader = stream.epoch(0, start_step=3)
    accounted = {
        index: items
        for role in range(2 if workers else 1)
        for index, items in loader.source.raw_batches(role)
    }
    assert sorted(accounted) == [3, 4, 5]
    for index, (images, labels) in zip(range(3, 6), loader, strict=True):
        seed = mix_seed("augment", stream.seed, 0, 1, index)
        expected = stream.decoder.decode(accounted[index], seed)
        assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])


def test_global_batch_must_divide(uneven: Path) -> None:
    with pytest.raises(ValueError, match="global batch 32 is not a multiple of 3 ranks"):
        TrainStream(config(uneven), rank=0, world_size=3, global_batch=GLOBAL)
    with pytest.raises(ValueError, match="less than one global batch of 128"):
        TrainStream(config(uneven), rank=0, world_size=1, global_batch=128)
