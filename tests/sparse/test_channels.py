"""Channel-level DST (sparse/channels.py): schedule, exact counts, removed channels stay
removed and zero, the masked network equals its slim cut, resume, and two gloo ranks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.sparse.channels import removed_fraction, select_channels
from ft_dist.sparse.slim import slim_model
from tests.gloo_workers import run_workers
from tests.sparse.helpers import batch, make_optimizer, tiny_cnn, train_step

# tiny_cnn: conv(3->8)+BN, conv(8->16), pool 2x2, flatten, linear(64->10). Removable groups:
# the first conv's 8 channels and the second conv's 16 (the linear's outputs are classes).
GROUP_SIZES = {"0": 8, "3": 16}


def channel_config(**overrides) -> SparsityConfig:
    values = dict(
        density=0.3, update_every_steps=2, drop_fraction=0.3, channel_sparsity=0.5,
        channel_start_step=0, channel_end_step=6, seed=3,
    )  # fmt: skip
    return SparsityConfig(**(values | overrides))


def run(steps: int, config: SparsityConfig, optimizer: str = "sgd", model=None):
    model = model or tiny_cnn()
    opt = make_optimizer(model, optimizer)
    sparsity = DynamicSparsity(model, opt, config)
    for step in range(steps):
        train_step(model, opt, sparsity, step)
    return model, opt, sparsity


def test_schedule_is_cubic_and_reaches_the_target_at_the_end_step() -> None:
    assert removed_fraction(0, 0.5, 0, 10) == 0.0
    assert removed_fraction(10, 0.5, 0, 10) == pytest.approx(0.5)
    assert removed_fraction(50, 0.5, 0, 10) == pytest.approx(0.5)
    assert removed_fraction(5, 0.5, 0, 10) == pytest.approx(0.5 * (1 - 0.5**3))
    assert removed_fraction(3, 0.4, 4, 8) == 0.0  # before the start


def test_selection_is_global_lowest_first_with_a_floor_per_group() -> None:
    scores = {"a": torch.tensor([0.1, 0.2, 0.9]), "b": torch.tensor([0.05, 0.15, 0.3, 0.4])}
    alive = {"a": torch.ones(3, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
    chosen = select_channels(scores, alive, {"a": 1, "b": 2}, count=4)
    # lowest first: b0, a0, b1, a1; then b would drop below its floor of 2.
    assert chosen == {"a": [0, 1], "b": [0, 1]}
    chosen = select_channels(scores, alive, {"a": 2, "b": 3}, count=4)
    assert chosen == {"a": [0], "b": [0]}  # floors stop it early


def test_zero_channel_sparsity_is_the_unstructured_engine() -> None:
    a = run(6, channel_config(channel_sparsity=0.0, channel_end_step=None))
    b = run(6, SparsityConfig(density=0.3, update_every_steps=2, drop_fraction=0.3, seed=3))
    assert a[2].channels is None and "channels" not in a[2].state_dict()
    for name in a[2].masks:
        assert torch.equal(a[2].masks[name], b[2].masks[name])
        assert torch.equal(a[0].state_dict()[name], b[0].state_dict()[name])


@pytest.mark.parametrize("growth", ["gradient", "random"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_removed_channels_are_zero_inactive_and_counts_exact(growth: str, optimizer: str):
    config = channel_config(growth=growth)
    model, opt, sparsity = run(10, config, optimizer)
    channels = sparsity.channels
    total = sum(GROUP_SIZES.values())
    assert channels.num_removed() == round(0.5 * total)  # reached by step 6, then kept
    kept = {name: int(alive.sum()) for name, alive in channels.alive.items()}
    floors = {name: max(1, -(-size // 4)) for name, size in GROUP_SIZES.items()}
    assert all(kept[name] >= floors[name] for name in GROUP_SIZES)
    # Exact per-layer counts, the sparse layers' budget kept (to one weight per layer).
    for name in sparsity.sparse_names:
        assert int(sparsity.masks[name].sum()) == sparsity.num_active[name]
    active = sum(sparsity.num_active[n] for n in sparsity.sparse_names)
    assert abs(active - channels.budget) <= len(sparsity.sparse_names)
    # Every removed position: zero weight, inactive mask, zero optimizer state.
    params = dict(model.named_parameters())
    for name, keep in channels.keep.items():
        assert torch.all(params[name][~keep] == 0), name
        if name in sparsity.masks:
            assert not sparsity.masks[name][~keep].any(), name
        for state in opt.state[params[name]].values():
            if torch.is_tensor(state) and state.shape == keep.shape:
                assert torch.all(state[~keep] == 0), name
    # BatchNorm of a removed channel of the first conv: weight and bias zero.
    gone = ~channels.alive["0"]
    assert torch.all(model[1].weight[gone] == 0) and torch.all(model[1].bias[gone] == 0)


def test_explorations_never_regrow_removed_channels() -> None:
    model, opt, sparsity = run(8, channel_config(growth="random"))
    keep = {n: k.clone() for n, k in sparsity.channels.keep.items()}
    for _ in range(3):
        sparsity.explore(drop_fraction=0.8, growth="random")
        for name, mask in sparsity.masks.items():
            if name in keep:
                assert not mask[~keep[name]].any(), name
        for name in sparsity.sparse_names:
            assert int(sparsity.masks[name].sum()) == sparsity.num_active[name]


def test_masked_network_equals_its_slim_cut() -> None:
    model, _, sparsity = run(8, channel_config())
    model.eval()
    images, _ = batch(99)
    with torch.no_grad():
        expected = model(images)
    cut = slim_model(copy.deepcopy(model), sparsity.masks, torch.zeros(1, 3, 8, 8))
    slim, masks, removed = cut.model, cut.masks, cut.removed
    assert {k: len(v) for k, v in removed.items()} == {
        n: int((~a).sum()) for n, a in sparsity.channels.alive.items() if (~a).any()
    }
    assert slim[0].out_channels == int(sparsity.channels.alive["0"].sum())
    with torch.no_grad():
        torch.testing.assert_close(slim(images), expected, rtol=1e-5, atol=1e-6)
    for name, param in slim.named_parameters():
        if name in masks:  # the remaining unstructured sparsity is kept
            assert torch.all(param[~masks[name]] == 0)


def test_flops_count_removed_channels_as_nothing() -> None:
    _, _, sparsity = run(8, channel_config())
    stats = sparsity.stats()
    assert stats["sparse/channels/removed_fraction"] == pytest.approx(0.5, abs=0.05)
    assert 0 < stats["sparse/channels/slim_dense_flops_ratio"] < 0.75
    assert (
        0
        < stats["sparse/channels/forward_flops_ratio"]
        <= stats["sparse/channels/slim_dense_flops_ratio"]
    )
    assert stats["sparse/layer/0/channels_kept"] + stats["sparse/layer/3/channels_kept"] == 12


def test_resume_mid_schedule_is_bit_identical() -> None:
    config = channel_config(growth="gradient")
    model, opt, sparsity = run(4, config)  # one removal done (step 2), more to come
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sparsity": sparsity.state_dict()}
    )
    for step in range(4, 10):
        train_step(model, opt, sparsity, step)

    # A fresh run built as the loop builds it, then restored in checkpoint order.
    resumed = tiny_cnn(seed=7)
    opt2 = make_optimizer(resumed, "sgd")
    sparsity2 = DynamicSparsity(resumed, opt2, config)
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sparsity2.load_state_dict(saved["sparsity"])
    for step in range(4, 10):
        train_step(resumed, opt2, sparsity2, step)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    for name in sparsity.masks:
        assert torch.equal(sparsity.masks[name], sparsity2.masks[name]), name
    assert sparsity.num_active == sparsity2.num_active
    assert sparsity.channels.state_dict().keys() == sparsity2.channels.state_dict().keys()
    for name, alive in sparsity.channels.alive.items():
        assert torch.equal(alive, sparsity2.channels.alive[name])


def test_an_older_flops_history_without_the_slim_price_reads_as_full() -> None:
    _, _, sparsity = run(4, channel_config())
    state = copy.deepcopy(sparsity.state_dict())
    history = state["channels"]["flops_history"]
    assert {len(entry) for entry in history} == {3} and history[-1][2] < history[0][2]
    state["channels"]["flops_history"] = [entry[:2] for entry in history]  # as written before
    _, _, restored = run(0, channel_config())
    restored.load_state_dict(state)
    dense = sparsity.channels.dense_flops
    assert restored.channels.flops_history == [(s, f, dense) for s, f, _ in history]


def test_a_checkpoint_without_channels_is_refused() -> None:
    _, _, plain = run(2, SparsityConfig(density=0.3, update_every_steps=2, seed=3))
    model = tiny_cnn()
    sparsity = DynamicSparsity(model, None, channel_config())
    with pytest.raises(ValueError, match="written without it"):
        sparsity.load_state_dict(plain.state_dict())


def test_the_engine_used_directly_needs_the_end_step() -> None:
    """`ft-dist train` fills in its method's default; a plain loop must say when to end."""
    with pytest.raises(ValueError, match="channel_end_step"):
        DynamicSparsity(tiny_cnn(), None, channel_config(channel_end_step=None))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"channel_start_step": 6, "channel_end_step": 6}, "channel_end_step"),
        ({"update": "none"}, "dynamic updates"),
        ({"stop_step": 4}, "stop_step"),
        ({"channel_sparsity": 1.0}, "less than 1"),
        ({"channel_group_sparsity": {"0": 0.75}}, "channel_allocation=uniform"),
        (
            {"channel_allocation": "uniform", "channel_group_sparsity": {"0": 1.0}},
            r"fractions must be in \[0, 1\)",
        ),
    ],
)
def test_config_errors_name_the_fix(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        channel_config(**overrides)


def _same_channels_on_every_rank(rank: int, world_size: int) -> None:
    dist.init_process_group("gloo")
    model = DistributedDataParallel(tiny_cnn(seed=rank))  # DDP broadcasts rank 0's weights
    optimizer = make_optimizer(model, "sgd")
    # check_consistency (on by default) compares masks and alive channels after each update.
    sparsity = DynamicSparsity(model, optimizer, channel_config(growth="gradient"))
    for step in range(8):
        train_step(model, optimizer, sparsity, step, rank=rank)  # different data per rank
    assert sparsity.channels.num_removed() == 12
    gathered: list = [None] * world_size
    state = {n: v.clone() for n, v in sparsity.channels.alive.items()}
    state |= {n: m.clone() for n, m in sparsity.masks.items()}
    dist.all_gather_object(gathered, state)
    for name, value in gathered[0].items():
        assert torch.equal(value, gathered[1][name]), name
    weights: list = [None] * world_size
    dist.all_gather_object(weights, dict(model.module.named_parameters()))
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


@pytest.mark.dist
def test_two_ranks_remove_the_same_channels() -> None:
    run_workers(_same_channels_on_every_rank, 2)


def test_first_forward_is_needed_before_removal() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    sparsity = DynamicSparsity(model, None, channel_config(update_every_steps=1, growth="random"))
    with pytest.raises(RuntimeError, match="first forward"):
        sparsity.step()


def test_a_removal_update_keeps_the_surviving_weights_of_a_layer() -> None:
    """At a removal, a layer that lost weights swaps the drop fraction of what it still has
    (never drops all of it because its new count is larger)."""
    config = channel_config(growth="random", drop_fraction=0.3, channel_end_step=2)
    model, opt, sparsity = run(1, config)
    before = {n: m.clone() for n, m in sparsity.masks.items()}
    train_step(model, opt, sparsity, 1)  # step 2: every channel to remove goes at once
    params = dict(model.named_parameters())
    assert sparsity.channels.num_removed() == 12
    for name in sparsity.sparse_names:
        survivors = int((before[name] & sparsity.channels.keep[name]).sum())
        kept = min(survivors, sparsity.num_active[name])
        assert int((params[name] != 0).sum()) >= kept - math.ceil(0.3 * kept) - 1, name


def test_uniform_allocation_takes_the_same_share_of_every_group() -> None:
    _, _, sparsity = run(8, channel_config(channel_allocation="uniform", channel_sparsity=0.5))
    kept = {name: int(alive.sum()) for name, alive in sparsity.channels.alive.items()}
    assert kept == {name: size // 2 for name, size in GROUP_SIZES.items()}
    for name in sparsity.sparse_names:
        assert int(sparsity.masks[name].sum()) == sparsity.num_active[name]


def test_group_fractions_replace_the_uniform_share_for_the_groups_they_name() -> None:
    config = channel_config(channel_allocation="uniform", channel_group_sparsity={"0": 0.75})
    _, _, sparsity = run(8, config)
    kept = {name: int(alive.sum()) for name, alive in sparsity.channels.alive.items()}
    assert kept == {"0": 2, "3": 8}  # the first conv keeps a quarter, the rest half
    for name in sparsity.sparse_names:
        assert int(sparsity.masks[name].sum()) == sparsity.num_active[name]
    globbed = channel_config(channel_allocation="uniform", channel_group_sparsity={"*": 0.25})
    _, _, sparsity = run(8, globbed)
    assert {n: int(a.sum()) for n, a in sparsity.channels.alive.items()} == {"0": 6, "3": 12}


def test_a_group_fraction_for_no_group_names_the_groups() -> None:
    config = channel_config(channel_allocation="uniform", channel_group_sparsity={"conv9": 0.5})
    with pytest.raises(ValueError, match=r"\['conv9'\] name no channel group.*\['3', '0'\]"):
        run(1, config)
