"""Channel-level DST in the loop every Ray worker runs: EDST resumes bit-identically in the
middle of the removal schedule (from a checkpoint of the shrunk model) and its tickets
record the same cut; DeepSpeed ZeRO-2 on two gloo ranks cuts the removed channels out of
its masters and resumes exactly from a slim checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ft_dist.layout import run_dir, ticket_path
from ft_dist.sparse.flops import training_flops_per_example
from tests.gloo_workers import run_workers
from tests.train.conftest import tiny_config
from tests.train.test_loop import (
    assert_same_training_state,
    final_state,
    resume_copy,
    resume_on_every_rank,
    run_loop,
)

# small-cnn on the tiny MNIST slice: 8 steps per epoch on one rank, updates every 3 steps;
# half of the 224 removable channels go by step 6 (inside the 1-epoch exploration).
CHANNELS = {
    "update_every_steps": 3,
    "channel_sparsity": 0.5,
    "channel_start_step": 0,
    "channel_end_step": 6,
}
EDST = {
    "method": "edst",
    "num_members": 2,
    "edst": {"exploration_epochs": 1, "refinement_epochs": 1},
}


@pytest.mark.slow
def test_edst_resumes_mid_schedule_and_tickets_share_the_removed_channels(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(
        tiny_mnist,
        tmp_path / "a",
        sparsity=CHANNELS,
        ensemble=EDST,
        train={"checkpoint_every_steps": 4, "keep_checkpoints": 10},
    )
    summary, _, _ = run_loop(cfg)
    assert summary["steps"] == 24 and summary["sparse/channels/removed_fraction"] == 0.5
    assert 0 < summary["sparse/channels/slim_dense_flops_ratio"] < 1.0
    run = run_dir(cfg.train)
    tickets = [torch.load(ticket_path(run, m), weights_only=True) for m in (1, 2)]
    alive = final_state(cfg)["sparsity"]["channels"]["alive"]  # fixed since step 6
    assert sum(int((~a).sum()) for a in alive.values()) == 112
    removed = {g: (~a).nonzero().flatten().tolist() for g, a in alive.items() if not a.all()}
    kept = int(alive["features.0"].sum())
    for ticket in tickets:  # both: the same channels cut out (channel_shrink), the rest moved
        assert ticket["channels"]["removed"] == removed
        assert ticket["model"]["features.0.weight"].shape[0] == kept
        assert ticket["model"]["features.1.running_mean"].shape == (kept,)
        assert ticket["masks"]["features.4.weight"].shape[1] == kept
    assert any(not torch.equal(tickets[0]["masks"][n], m) for n, m in tickets[1]["masks"].items())

    # Training FLOPs price each stretch between removals at its own sparse and slim size
    # (a removed channel costs nothing, in the dense gradient of RigL growth either).
    history = final_state(cfg)["sparsity"]["channels"]["flops_history"]
    assert [step for step, _, _ in history] == [0, 3, 6] and history[-1][2] < history[0][2]

    def price(sparse: float, slim: float) -> float:  # RigL, ΔT = 3 (SPEC §8)
        return training_flops_per_example(slim, sparse, "gradient", 3)

    steps = [3, 3, 18]  # 24 steps: [0, 3), [3, 6), [6, 24)
    expected = sum(n * price(sp, sl) for n, (_, sp, sl) in zip(steps, history, strict=True)) / 24
    assert summary["train_flops_per_example"] == pytest.approx(expected, rel=1e-12)
    # Not the price before any removal: the same budget of active weights moved into the
    # slim convs, which cost more FLOPs per weight than the linear layers.
    assert summary["train_flops_per_example"] > 1.2 * price(*history[0][1:])
    assert summary["train_flops"] == pytest.approx(expected * summary["images_seen"], rel=1e-12)

    resumed = resume_copy(cfg, 4, tmp_path / "b")  # after the first removal, before the rest
    resumed_summary, _, _ = run_loop(resumed)
    assert_same_training_state(final_state(cfg), final_state(resumed))
    assert resumed_summary["train_flops"] == pytest.approx(summary["train_flops"], rel=1e-12)


def _deepspeed_worker(rank: int, world_size: int, root: Path, out: Path) -> None:
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    train = {
        "epochs": 1,
        "strategy": "deepspeed",
        "zero_stage": 2,
        "checkpoint_every_steps": 2,
        "keep_checkpoints": 5,
    }
    sparsity = CHANNELS | {"update_every_steps": 1, "channel_end_step": 3}
    cfg = tiny_config(root, out / "a", train=train, sparsity=sparsity)
    summary, _, _ = run_loop(cfg)  # 2 ranks x 32: 4 steps; removals at steps 1-3
    assert summary["steps"] == 4 and summary["sparse/channels/removed_fraction"] == 0.5
    resumed = resume_on_every_rank(cfg, rank, 2, 4, out / "b")
    state = final_state(cfg)
    alive = state["sparsity"]["channels"]["alive"]["features.0"]
    model = state["model"]  # the removed channels are cut out, masters and state with them
    for key in ("features.0.weight", "features.1.weight", "features.1.bias"):
        assert model[key].shape[0] == int(alive.sum()), key
    if rank == 0:
        assert_same_training_state(state, final_state(resumed))


@pytest.mark.dist
@pytest.mark.slow
def test_deepspeed_zero2_two_ranks_keeps_removed_channels_and_resumes(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    run_workers(_deepspeed_worker, 2, tiny_mnist, tmp_path)
