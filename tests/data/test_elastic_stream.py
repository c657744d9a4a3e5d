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


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 4), (4, 2)])
def test_resume_on_another_world_size_reads_each_sample_once(
    uneven: Path, before: int, after: int
) -> None:
    epoch = [sorted(keys) for keys in step_keys(uneven, 1, start=0)]
    assert len(epoch) == 110 // GLOBAL and all(len(keys) == GLOBAL for keys in epoch)
    assert len({key for keys in epoch for key in keys}) == 3 * GLOBAL  # no sample twice
    for k in range(1, len(epoch)):  # world size `before` for steps < k, then `after`
        first = step_keys(uneven, before, start=0)[:k]
        rest = step_keys(uneven, after, start=k)
        resumed = [sorted(keys) for keys in first + rest]
        assert resumed == epoch  # the same global batch at each step: same samples, once


def test_epochs_and_loader_roles(uneven: Path) -> None:
    one = step_keys(uneven, 2, start=0, epoch=0)
    assert step_keys(uneven, 2, start=0, epoch=0, loader_workers=2) == one
    assert sorted(map(sorted, step_keys(uneven, 1, start=0, epoch=1))) != sorted(map(sorted, one))


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
