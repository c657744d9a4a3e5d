"""Two real gloo ranks: exact evaluation over uneven shards and lockstep training steps."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ft_dist.data import DataConfig
from ft_dist.data.evaluation import EvalStream, gather_by_index
from ft_dist.data.pipeline import TrainStream
from tests.data.helpers import make_split
from tests.gloo_workers import free_port

pytestmark = pytest.mark.dist
WORLD_SIZE = 2
# 33 samples over 5 uneven shards (>= 4 slots: whole shards), and 21 samples over 2 shards
# (< 4 slots: shards shared inside); both odd, so no even split hides a drop or duplicate.
SPLITS = {"odd": [13, 4, 9, 1, 6], "few": [17, 4]}


def make_config(root: Path, world_size: int = WORLD_SIZE) -> DataConfig:
    workers = 2 if world_size > 1 else 0
    return DataConfig(
        root=str(root), train_split="odd", val_split=None, test_split=None,
        batch_size_per_worker=4, eval_batch_size=3, loader_workers=workers, shuffle_buffer=8,
    )  # fmt: skip


def evaluate(cfg: DataConfig, split: str, rank: int, world_size: int) -> dict:
    """What an evaluation loop does: per-sample outputs, then the exact gather."""
    stream = EvalStream(cfg, split=split, rank=rank, world_size=world_size)
    labels, scores, indices = [], [], []
    for images, batch_labels, batch_indices in stream:
        labels.append(batch_labels)
        scores.append(images.mean(dim=(1, 2, 3)))  # a stand-in for model outputs
        indices.append(batch_indices)
    local = {"labels": torch.cat(labels), "score": torch.cat(scores)}
    return {"full": gather_by_index(local, torch.cat(indices), stream.num_samples),
            "local_count": len(local["labels"])}  # fmt: skip


def _rank_main(rank: int, port: int, root: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),  # a rank short of batches would hang all_reduce
    )  # fmt: skip
    try:
        cfg = make_config(Path(root))
        results = {split: evaluate(cfg, split, rank, WORLD_SIZE) for split in SPLITS}
        stream = TrainStream(cfg, rank=rank, world_size=WORLD_SIZE)
        steps = 0
        for _, labels in stream.epoch(0):
            total = labels.sum().reshape(1)
            dist.all_reduce(total)  # what DDP's backward does every step
            steps += 1
        results["steps"] = steps
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    root = tmp_path_factory.mktemp("shards")
    labels = {
        split: make_split(root, split, sizes, num_classes=3) for split, sizes in SPLITS.items()
    }
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(
        _rank_main, args=(free_port(), str(root), str(out)), nprocs=WORLD_SIZE,
        start_method="spawn", join=True,
    )  # fmt: skip
    results = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    return root, labels, results


@pytest.mark.parametrize("split", list(SPLITS))
def test_each_sample_evaluated_exactly_once(ranks_output, split: str) -> None:
    root, labels, results = ranks_output
    single = evaluate(make_config(root, world_size=1), split, rank=0, world_size=1)["full"]
    for result in results:
        full = result[split]["full"]
        assert full["labels"].tolist() == labels[split]  # sample i is sample i, on every rank
        assert torch.equal(full["score"], single["score"])  # same outputs as one process
    counts = [result[split]["local_count"] for result in results]
    assert sum(counts) == sum(SPLITS[split]) and min(counts) > 0  # shared, no padding


def test_gathered_metrics_are_exact(ranks_output) -> None:
    root, labels, results = ranks_output
    full = results[0]["odd"]["full"]
    predictions = (full["score"] * 10).long() % 3  # any deterministic "classifier"
    single = evaluate(make_config(root, world_size=1), "odd", rank=0, world_size=1)["full"]
    expected = ((single["score"] * 10).long() % 3 == torch.tensor(labels["odd"])).sum()
    assert int((predictions == full["labels"]).sum()) == int(expected)


def test_ranks_run_the_same_number_of_training_steps(ranks_output) -> None:
    _, _, results = ranks_output
    assert [result["steps"] for result in results] == [33 // (WORLD_SIZE * 4)] * WORLD_SIZE


def test_gather_rejects_duplicates_and_gaps() -> None:
    values = {"x": torch.arange(3.0)}
    assert gather_by_index(values, torch.tensor([2, 0, 1]), 3)["x"].tolist() == [1.0, 2.0, 0.0]
    with pytest.raises(RuntimeError, match="1 missing, 1 repeated"):
        gather_by_index(values, torch.tensor([0, 0, 1]), 3)
    with pytest.raises(RuntimeError, match="1 out of range"):
        gather_by_index(values, torch.tensor([0, 1, 3]), 3)
