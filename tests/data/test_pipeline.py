"""The training stream: equal steps, determinism, resume, and errors naming shard and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ft_dist.data import DataConfig, DataError
from ft_dist.data.pipeline import TrainStream, check_dataset
from tests.data.helpers import flip_byte, make_split

UNEVEN = [50, 7, 31, 3, 19]  # 110 samples


def config(root: Path | str, **fields) -> DataConfig:
    values = {"batch_size_per_worker": 8, "loader_workers": 0, "shuffle_buffer": 16}
    values |= {"val_split": None, "test_split": None}
    return DataConfig(root=str(root), **{**values, **fields})


def epoch_batches(cfg: DataConfig, rank: int = 0, world_size: int = 1, epoch: int = 0, **kw):
    stream = TrainStream(cfg, rank=rank, world_size=world_size, seed=kw.pop("seed", None))
    return list(stream.epoch(epoch, **kw))


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


@pytest.fixture
def uneven(tmp_path: Path) -> Path:
    make_split(tmp_path, "train", UNEVEN, num_classes=3)
    return tmp_path


@pytest.mark.parametrize("workers", [0, 2])
def test_every_rank_gets_exactly_steps_per_epoch(uneven: Path, workers: int) -> None:
    cfg = config(uneven, loader_workers=workers)
    steps = TrainStream(cfg, rank=0, world_size=2).steps_per_epoch
    assert steps == 110 // 16
    for rank in range(2):
        for epoch in range(2):
            batches = epoch_batches(cfg, rank, 2, epoch)
            assert len(batches) == steps
            for images, labels in batches:
                assert images.shape == (8, 1, 12, 12) and images.dtype == torch.float32
                assert labels.dtype == torch.int64 and 0 <= labels.min() <= labels.max() < 3


def test_seeded_epochs_are_reproducible_and_differ(uneven: Path) -> None:
    cfg = config(uneven)
    first = epoch_batches(cfg)
    assert same(first, epoch_batches(cfg))
    assert not same(first, epoch_batches(cfg, epoch=1))
    assert not same(first, epoch_batches(cfg, seed=5))
    ranks = [torch.cat([b[0] for b in epoch_batches(cfg, r, 2)]) for r in range(2)]
    assert not torch.equal(ranks[0], ranks[1])


def test_worker_count_does_not_change_steps(uneven: Path) -> None:
    for workers in (0, 1, 2):
        assert len(epoch_batches(config(uneven, loader_workers=workers), 1, 2)) == 6


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_reproduces_the_rest(tmp_path: Path, workers: int) -> None:
    # Random augmentation (imagenet recipe) makes this a real test of the per-batch seeds.
    make_split(
        tmp_path, "train", [20, 23, 11, 17, 22], size=20, fmt="JPEG", mode="RGB", recipe=None
    )
    cfg = config(tmp_path, loader_workers=workers, image_size=16, batch_size_per_worker=5)
    stream = TrainStream(cfg, rank=1, world_size=2)
    full = list(stream.epoch(3))
    assert len(full) == 9
    for start in (1, 4, 9):
        loader = stream.epoch(3, start_step=start)
        assert len(loader) == 9 - start
        assert same(list(loader), full[start:])
        assert loader.state_dict() == {"epoch": 3, "step": 9}


def test_augmentation_leaves_the_callers_rng_alone(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [12, 12], size=20, fmt="JPEG", mode="RGB", recipe="imagenet")
    cfg = config(tmp_path, image_size=16, batch_size_per_worker=4)
    torch.manual_seed(0)
    epoch_batches(cfg)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.parametrize("form", ["pipe", "file"])
def test_url_roots_stream_the_same_batches(uneven: Path, form: str) -> None:
    root = f"pipe:cat {uneven}/{{path}}" if form == "pipe" else f"file://{uneven}"
    assert same(epoch_batches(config(root)), epoch_batches(config(uneven)))


def test_fewer_shards_than_ranks_times_workers(uneven: Path) -> None:
    with pytest.raises(ValueError, match=r"5 shards, fewer than .* 3 × 2; lower data.loader_w"):
        TrainStream(config(uneven, loader_workers=2), rank=0, world_size=3)
    with pytest.raises(ValueError, match="fewer than ranks × loader workers"):
        check_dataset(config(uneven, loader_workers=3), world_size=2)


def test_less_than_one_global_batch(uneven: Path) -> None:
    with pytest.raises(ValueError, match="less than one global batch"):
        TrainStream(config(uneven, batch_size_per_worker=64), rank=0, world_size=2)


def test_bad_rank_and_start_step(uneven: Path) -> None:
    with pytest.raises(ValueError, match="rank 2 is not in"):
        TrainStream(config(uneven), rank=2, world_size=2)
    with pytest.raises(ValueError, match="start_step 14 is outside 0..13"):
        TrainStream(config(uneven), rank=0, world_size=1).epoch(0, start_step=14)


def test_corrupt_sample_names_shard_and_key(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [6, 6], corrupt=frozenset({8}))
    cfg = config(tmp_path, batch_size_per_worker=4)
    with pytest.raises(DataError, match=r"shard-000001.tar sample 000000008: cannot decode"):
        epoch_batches(cfg)


def test_skip_corrupt_counts_and_keeps_batches_full(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [6, 6], corrupt=frozenset({8}))
    cfg = config(tmp_path, batch_size_per_worker=4, skip_corrupt=True)
    stream = TrainStream(cfg, rank=0, world_size=1)
    batches = list(stream.epoch(0))
    assert len(batches) == 3 and all(len(labels) == 4 for _, labels in batches)
    assert stream.decoder.skipped == 1


def test_corrupt_sample_error_crosses_loader_workers(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [6, 6], corrupt=frozenset({2, 8}))
    with pytest.raises(DataError, match=r"shard-00000[01].tar sample 00000000[28]"):
        epoch_batches(config(tmp_path, batch_size_per_worker=2, loader_workers=2))


def test_label_outside_range_in_a_sample(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [4, 4], num_classes=3, labels=[0, 1, 2, 0, 1, 5, 0, 1])
    manifest = tmp_path / "train" / "manifest.json"  # a manifest that hides the bad label
    manifest.write_text(manifest.read_text().replace('"label_max": 5', '"label_max": 2'))
    with pytest.raises(DataError, match=r"shard-000001.tar sample 000000005 has label 5"):
        epoch_batches(config(tmp_path, batch_size_per_worker=4))


def test_truncated_shard_names_shard_and_last_key(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [5, 5])
    shard = tmp_path / "train" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:2600])  # cut inside the second sample's image
    match = r"shard-000000.tar is truncated or unreadable after member '000000000.cls'"
    with pytest.raises(DataError, match=match):
        epoch_batches(config(tmp_path, batch_size_per_worker=5, shuffle_buffer=0))


def test_shard_cut_between_members_fails_the_count(tmp_path: Path) -> None:
    make_split(tmp_path, "train", [5, 5])
    shard = tmp_path / "train" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: 4 * 1024])  # exactly two whole samples
    with pytest.raises(DataError, match="shard-000000.tar holds 2 samples, its manifest says 5"):
        epoch_batches(config(tmp_path, batch_size_per_worker=5, shuffle_buffer=0))


def test_remote_checksum_mismatch_is_caught_while_streaming(uneven: Path) -> None:
    flip_byte(uneven / "train" / "shard-000003.tar")
    root = f"pipe:cat {uneven}/{{path}}"
    check_dataset(config(root), world_size=1)  # remote: nothing to check up front
    with pytest.raises(DataError, match="shard-000003.tar does not match the sha256"):
        epoch_batches(config(root))


def test_check_dataset_verifies_local_checksums(uneven: Path) -> None:
    assert check_dataset(config(uneven), world_size=2).num_classes == 3
    flip_byte(uneven / "train" / "shard-000002.tar")
    check_dataset(config(uneven, verify="size"), world_size=2)
    with pytest.raises(ValueError, match="shard-000002.tar does not match the sha256"):
        check_dataset(config(uneven), world_size=2)


def test_mnist_stream(mnist_root: Path) -> None:
    cfg = DataConfig(root=str(mnist_root), batch_size_per_worker=64, loader_workers=2)
    assert check_dataset(cfg, world_size=2).image_size == 28
    stream = TrainStream(cfg, rank=0, world_size=2)
    assert stream.steps_per_epoch == 27 and stream.global_batch_size == 128
    images, labels = next(iter(stream.epoch(0)))
    assert images.shape == (64, 1, 28, 28)
    assert abs(float(images.mean())) < 0.5 and len(labels.unique()) > 5


def test_failing_download_command_is_an_error(uneven: Path) -> None:
    # The command streams every byte, then exits 1 for one shard (a failed download).
    root = f"pipe:cat {uneven}/{{path}} && test {{path}} != train/shard-000001.tar"
    with pytest.raises(DataError, match="shard-000001.tar"):
        epoch_batches(config(root))
