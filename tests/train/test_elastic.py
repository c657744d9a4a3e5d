"""Elastic training without Ray: the worker range in the config, the accumulation that keeps
the global batch fixed, and a run trained on 2 gloo ranks that resumes on 1 (DDP, and
DeepSpeed ZeRO-0, the one ZeRO stage whose checkpoint is not partitioned per rank)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from ft_dist.layout import run_dir
from ft_dist.train.config import TrainConfig
from ft_dist.train.setup import batch_arithmetic
from tests.gloo_workers import run_workers
from tests.train.conftest import tiny_config
from tests.train.test_loop import (
    assert_same_training_state,
    final_state,
    resume_copy,
    run_loop,
)


def test_worker_range_is_min_and_max() -> None:
    train = TrainConfig(num_workers=[2, 4])
    assert (train.min_workers, train.num_workers, train.elastic) == (2, 4, True)
    assert not TrainConfig(num_workers=4).elastic
    assert TrainConfig(**train.model_dump()) == train  # config.yaml round trip
    with pytest.raises(ValueError, match="min_workers=3 exceeds train.num_workers=2"):
        TrainConfig(num_workers=[3, 2])
    with pytest.raises(ValueError, match="int or \\[min, max\\]"):
        TrainConfig(num_workers=[1, 2, 3])
    with pytest.raises(ValueError, match="ZeRO checkpoints are partitioned per rank"):
        TrainConfig(num_workers=[1, 2], strategy="deepspeed", zero_stage=1)


def test_accumulation_keeps_the_global_batch() -> None:
    elastic = TrainConfig(num_workers=[1, 4], grad_accum_steps=2)  # 4 x 16 x 2 = 128
    assert [batch_arithmetic(elastic, 16, w) for w in (4, 2, 1)] == [(2, 128), (4, 128), (8, 128)]
    with pytest.raises(ValueError, match="global batch 128 is not a multiple of .*=16 x 3"):
        batch_arithmetic(elastic, 16, 3)
    fixed = TrainConfig(global_batch_size=96)
    assert batch_arithmetic(fixed, 16, 2) == (3, 96) and batch_arithmetic(fixed, 16, 6) == (1, 96)
    plain = TrainConfig(num_workers=2, grad_accum_steps=3)  # not elastic: as before
    assert batch_arithmetic(plain, 16, 2) == (3, 96) and batch_arithmetic(plain, 16, 1) == (3, 48)


STRATEGIES = {"ddp": {}, "deepspeed-zero0": {"strategy": "deepspeed", "zero_stage": 0}}


def elastic_config(root: Path, out: Path, strategy: str = "ddp"):
    # [1, 2] workers x 32 x 1 = a global batch of 64: 4 steps per epoch at either size.
    train = {"num_workers": [1, 2], "checkpoint_every_steps": 2, "keep_checkpoints": 10}
    # The LR scales with the global batch, so a changed batch would change it.
    train.update(STRATEGIES[strategy])
    # Channel-level DST, shrinking: half of the channels cut out by step 3 (updates every 3
    # steps), so the resume at step 2 restores the full model and the one at 6 a slim one.
    sparsity = {"channel_sparsity": 0.5, "channel_end_step": 3}
    return tiny_config(root, out, train=train, optim={"base_batch_size": 32}, sparsity=sparsity)


def _train(rank: int, world_size: int, cfgs: list) -> None:
    """Train each of `cfgs` in turn as one rank of a gloo group."""
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    _train_here(cfgs, rank)


def _train_here(cfgs: list, rank: int = 0) -> None:
    """Train each of `cfgs` in this process; rank 0 writes each run's summary and the LR of
    each step to RUN_DIR/test_run.json."""
    for cfg in cfgs:
        summary, tracker, _ = run_loop(cfg)
        if rank == 0:
            lrs = {step: m["train/lr"] for step, m in tracker.logged if "train/lr" in m}
            record = json.dumps({"summary": summary, "lr": lrs})
            (run_dir(cfg.train) / "test_run.json").write_text(record)


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def layer_counts(state: dict) -> dict[str, int]:
    masks = state["sparsity"]["masks"]
    return {name: int(mask.sum()) for name, mask in masks.items()}


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_ranks_resume_on_one(strategy: str, tiny_mnist: Path, tmp_path: Path) -> None:
    cfg = elastic_config(tiny_mnist, tmp_path / "a", strategy)
    run_workers(_train, 2, [cfg])
    reference = json.loads((run_dir(cfg.train) / "test_run.json").read_text())
    assert reference["summary"]["steps"] == 8 and reference["summary"]["world_size"] == 2
    # Resume mid-epoch 0 and mid-epoch 1 on one rank: DDP in this process, DeepSpeed in a
    # 1-rank gloo group (which it needs; a 1-worker Ray group gives it one).
    resumed = [resume_copy(cfg, step, tmp_path / f"one-{step}") for step in (2, 6)]
    if strategy == "ddp":
        with one_thread():  # as each gloo rank has: the same kernels' summation order
            _train_here(resumed)
    else:
        run_workers(_train, 1, resumed)
    for one_rank in resumed:
        one = json.loads((run_dir(one_rank.train) / "test_run.json").read_text())
        summary, lrs = one["summary"], one["lr"]
        assert summary["world_size"] == 1
        assert summary["steps"] == 8 and summary["images_seen"] == 8 * 64
        assert summary["train_flops"] == summary["train_flops_per_example"] * 8 * 64
        assert lrs and all(lr == reference["lr"][s] for s, lr in lrs.items())
        # DST kept every layer's exact count through the world-size change.
        assert layer_counts(final_state(one_rank)) == layer_counts(final_state(cfg))
        assert summary["sparse/channels/removed_fraction"] == 0.5
        # Bit-identical to the 2-rank run (weights, optimizer, masks, DST state, tickets):
        # the same samples, crops (seeded by column and step) and BatchNorm statistics
        # (column 0's) at either world size, one thread per rank in both.
        assert_same_training_state(final_state(one_rank), final_state(cfg))
        assert (run_dir(one_rank.train) / "summary.json").exists()
