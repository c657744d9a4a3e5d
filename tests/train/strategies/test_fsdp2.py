"""FSDP2 on 2 real gloo ranks: the same masks and losses as DDP with the same seed, every
tensor sharded, and inactive gradients, weights and optimizer state zero at every step; and
what needs whole layers refused at config time."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from ft_dist.config import load_config
from ft_dist.layout import checkpoint_dir
from ft_dist.sparse import SparsityConfig
from ft_dist.train.config import OptimConfig, TrainConfig
from ft_dist.train.strategies import STRATEGIES, check_strategy_supports
from ft_dist.train.strategies.base import build_strategy
from tests.gloo_workers import run_workers

NUM_STEPS = 8  # updates at steps 2, 4, 6, 8; an EDST exploration after step 5


# ------------------------------------------------------------------ config-time refusals
WHOLE_LAYER_SETTINGS = {"channel_sparsity": (0.5, "0"), "compat": ("official-imagenet", "none")}


@pytest.mark.parametrize("key", sorted(WHOLE_LAYER_SETTINGS))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategies_that_shard_layers_refuse_whole_layer_settings(key: str, strategy: str):
    value, off = WHOLE_LAYER_SETTINGS[key]
    sparsity = SparsityConfig(**{key: value, "channel_end_step": 10})
    if STRATEGIES[strategy].shards_layers:
        fix = f"set sparsity.{key}={off} \\(or train.strategy=ddp\\)"
        with pytest.raises(ValueError, match=f"^sparsity.{key}={value} needs whole .*{fix}$"):
            check_strategy_supports(strategy, sparsity)
    else:
        check_strategy_supports(strategy, sparsity)


def test_fsdp2_refuses_channel_sparsity_when_the_config_loads() -> None:
    """At config time, in one line naming the file, the field and the fix."""
    with pytest.raises(ValueError) as refused:
        load_config(
            "configs/demo_edst.yaml", ["train.strategy=fsdp2", "sparsity.channel_sparsity=0.5"]
        )
    assert str(refused.value) == (
        "configs/demo_edst.yaml: sparsity.channel_sparsity=0.5 needs whole layers on every "
        "rank, and train.strategy=fsdp2 shards them: set sparsity.channel_sparsity=0 (or "
        "train.strategy=ddp)"
    )
    load_config("configs/demo_edst.yaml", ["train.strategy=fsdp2"])  # the rest is served


def uneven_model() -> nn.Module:
    """Dim-0 sizes 8, 33 and 5: the last shard of the two Linear layers is shorter."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 33),
        nn.ReLU(),
        nn.Linear(33, 5),
    )


def rank_batch(rank: int, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Different data on every rank: only the all-reduced gradient keeps the runs equal."""
    generator = torch.Generator().manual_seed(1000 * rank + 10 * step + micro)
    return torch.randn(4, 1, 6, 6, generator=generator), torch.randint(
        0, 5, (4,), generator=generator
    )


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def assert_sharded(strategy) -> None:
    """No rank holds a full parameter, mask, EMA or optimizer state tensor."""
    sparsity = strategy.sparsity
    held = {f"param {n}": p for n, p in strategy.module.named_parameters()}
    held |= {f"mask {n}": m for n, m in sparsity.masks.items()}
    held |= {f"ever_active {n}": m for n, m in sparsity.ever_active.items()}
    for role, emas in sparsity.grad_emas.items():
        held |= {f"{role} EMA {n}": e for n, e in emas.items()}
    for name, param in strategy.module.named_parameters():
        for key, value in strategy.optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and value.dim() > 0:
                held[f"{key} of {name}"] = value
    for what, tensor in held.items():
        assert isinstance(tensor, DTensor), f"{what} is not sharded"
        assert tensor.to_local().numel() < tensor.numel(), f"this rank holds all of {what}"


def check_masked(strategy) -> None:
    """After the optimizer step: inactive weights and optimizer state are exactly 0."""
    sparsity = strategy.sparsity
    for name in sparsity.sparse_names:
        inactive = ~sparsity.masks[name].to_local()
        assert torch.count_nonzero(sparsity.params[name].to_local().detach()[inactive]) == 0
        for key, value in strategy.optimizer.state[sparsity.params[name]].items():
            if torch.is_tensor(value) and value.shape == sparsity.params[name].shape:
                assert torch.count_nonzero(value.to_local()[inactive]) == 0, f"{key} of {name}"


def train(strategy_name: str, sparsity: SparsityConfig, optim: OptimConfig, accum: int):
    """Losses per step, full masks after every update, final full weights."""
    rank = dist.get_rank()
    strategy = build_strategy(
        uneven_model(),
        train=TrainConfig(strategy=strategy_name, grad_accum_steps=accum),
        optim=optim,
        sparsity=sparsity,
        micro_batch_size=4,
        device=torch.device("cpu"),
        world_size=dist.get_world_size(),
    )
    sharded = strategy_name == "fsdp2"
    losses, masks = [], []
    for step in range(1, NUM_STEPS + 1):
        explore = step == 5
        strategy.begin_step(capture_grads=explore)
        for micro in range(accum):
            x, y = rank_batch(rank, step, micro)
            with strategy.micro_batch(micro == accum - 1):
                loss = nn.functional.cross_entropy(strategy.model(x), y)
                strategy.backward(loss, micro == accum - 1)
            losses.append(loss.item())
        strategy.before_optimizer_step()
        if sharded:  # the masking provably happened: inactive gradient entries are 0
            for name in strategy.sparsity.sparse_names:
                grad = strategy.sparsity.params[name].grad.to_local()
                inactive = ~strategy.sparsity.masks[name].to_local()
                assert torch.count_nonzero(grad[inactive]) == 0, f"gradient of {name}, {step}"
        strategy.optimizer_step()
        strategy.after_optimizer_step()
        if explore:
            strategy.explore(0.3, "gradient")
        if sharded:
            check_masked(strategy)
            assert_sharded(strategy)
        masks.append({n: full(m).clone() for n, m in strategy.sparsity.masks.items()})
    weights = {n: full(p.detach()).clone() for n, p in strategy.module.named_parameters()}
    stats = strategy.sparsity.stats()
    checksums = strategy.sparsity.mask_checksums() if sharded else None
    return losses, masks, weights, stats, checksums, strategy.sparsity.num_updates


CASES = (
    (
        SparsityConfig(density=0.3, growth="gradient", update_every_steps=2, drop_fraction=0.5),
        OptimConfig(name="sgd-nesterov", lr=0.1),
        1,
    ),
    (  # EMA growth, a gradient drop, Adam state, accumulated micro-batches
        SparsityConfig(
            density=0.3,
            growth="momentum",
            drop="saliency",
            update_every_steps=2,
            drop_fraction=0.5,
            sparse_init="uniform",
        ),
        OptimConfig(name="adamw", lr=1e-2),
        2,
    ),
)


def _equality_worker(rank: int, world_size: int) -> None:
    from ft_dist.sparse.consistency import mask_checksum

    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for sparsity, optim, accum in CASES:
        ddp = train("ddp", sparsity, optim, accum)
        fsdp = train("fsdp2", sparsity, optim, accum)
        assert ddp[5] == fsdp[5] == NUM_STEPS // 2 + 1  # 4 scheduled updates + 1 exploration
        torch.testing.assert_close(fsdp[0], ddp[0], rtol=1e-5, atol=1e-6)
        for step, (ddp_masks, fsdp_masks) in enumerate(zip(ddp[1], fsdp[1], strict=True)):
            for name, mask in ddp_masks.items():
                assert torch.equal(mask, fsdp_masks[name]), f"mask {name} after step {step + 1}"
        for name, weight in ddp[2].items():
            torch.testing.assert_close(fsdp[2][name], weight, rtol=1e-4, atol=1e-5)
        assert fsdp[3] == pytest.approx(ddp[3])  # statistics summed over the shards
        for name, checksum in fsdp[4].items():
            assert checksum == mask_checksum(ddp[1][-1][name])


@pytest.mark.dist
def test_fsdp2_equals_ddp_sharded_and_masked_at_every_step() -> None:
    run_workers(_equality_worker, 2)


# ------------------------------------------------------------------ reshard on resume
RESHARD_SPARSITY = SparsityConfig(
    density=0.3, growth="momentum", update_every_steps=2, drop_fraction=0.5
)


def build_fsdp2(world_size: int):
    return build_strategy(
        uneven_model(),
        train=TrainConfig(strategy="fsdp2"),
        optim=OptimConfig(name="adamw", lr=1e-2),
        sparsity=RESHARD_SPARSITY,
        micro_batch_size=4 * 2 // world_size,
        device=torch.device("cpu"),
        world_size=world_size,
    )


def run_steps(strategy, first: int, last: int) -> None:
    """Steps ``first..last`` of a 2-rank run's data: one rank takes both ranks' batches."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    for step in range(first, last + 1):
        parts = [rank_batch(r, step) for r in range(2) if world_size == 1 or r == rank]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        strategy.begin_step(capture_grads=step == 5)
        with strategy.micro_batch(True):
            strategy.backward(nn.functional.cross_entropy(strategy.model(x), y), True)
        strategy.step()
        if step == 5:
            strategy.explore(0.3, "gradient")


def states(strategy):
    from ft_dist.train.state import TrainStates

    return TrainStates(replicated={}, sharded=strategy.sharded_states())


def final(strategy) -> dict:
    """Everything that decides the run's future, as full tensors (collective)."""
    sparsity = strategy.sparsity
    optimizer = {
        f"{name}.{key}": full(value).clone()
        for name, param in strategy.module.named_parameters()
        for key, value in strategy.optimizer.state.get(param, {}).items()
    }
    return {
        "masks": {n: full(m).clone() for n, m in sparsity.masks.items()},
        "ever_active": {n: full(m).clone() for n, m in sparsity.ever_active.items()},
        "emas": {n: full(e).clone() for n, e in sparsity.grad_emas["growth"].items()},
        "weights": {n: full(p.detach()).clone() for n, p in strategy.module.named_parameters()},
        "optimizer": optimizer,
        "generator": sparsity.generator.get_state(),
        "updates": (sparsity.num_steps, sparsity.num_updates, sparsity.last_update),
    }


def assert_same(got: dict, expected: dict, exact: bool) -> None:
    assert got["updates"] == expected["updates"]
    assert torch.equal(got["generator"], expected["generator"])
    for key in ("masks", "ever_active", "emas", "weights", "optimizer"):
        assert got[key].keys() == expected[key].keys(), key
        for name, tensor in expected[key].items():
            if exact:
                assert torch.equal(got[key][name], tensor), f"{key} {name}"
            else:  # the same steps as the uninterrupted run, the same float operations
                torch.testing.assert_close(got[key][name], tensor, rtol=1e-5, atol=1e-6)


def _two_ranks_first(rank: int, world_size: int, root, out) -> None:
    """Steps 1-4, a checkpoint, then on without interruption to step 8."""
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    strategy = build_fsdp2(world_size)
    run_steps(strategy, 1, 4)
    states(strategy).save(root, 4, {}, rank=rank, keep=10)
    saved = final(strategy)
    run_steps(strategy, 5, 8)
    straight = final(strategy)
    if rank == 0:
        torch.save({"saved_4": saved, "straight": straight}, out)


def _one_rank(rank: int, world_size: int, root, out) -> None:
    """Loads the 2-rank checkpoint on 1 rank, runs steps 5-6 (the exploration), saves."""
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    strategy = build_fsdp2(world_size)
    states(strategy).load(checkpoint_dir(root, 4), rank=rank, expected_meta={})
    loaded = final(strategy)
    run_steps(strategy, 5, 6)
    assert_sharded_or_whole(strategy)
    states(strategy).save(root, 6, {}, rank=rank, keep=10)
    torch.save({"loaded_4": loaded, "saved_6": final(strategy)}, out)


def assert_sharded_or_whole(strategy) -> None:
    assert all(isinstance(p, DTensor) for p in strategy.module.parameters())


def _two_ranks_again(rank: int, world_size: int, root, first_out, one_out) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    first, one = torch.load(first_out), torch.load(one_out)
    assert_same(one["loaded_4"], first["saved_4"], exact=True)  # 2 -> 1 lost nothing
    # Resumed at 2 ranks from step 4: the uninterrupted run, step for step.
    strategy = build_fsdp2(world_size)
    states(strategy).load(checkpoint_dir(root, 4), rank=rank, expected_meta={})
    run_steps(strategy, 5, 8)
    assert_same(final(strategy), first["straight"], exact=True)
    # 1 -> 2: the 1-rank run's step-6 state, resharded, and training goes on from it.
    strategy = build_fsdp2(world_size)
    states(strategy).load(checkpoint_dir(root, 6), rank=rank, expected_meta={})
    assert_same(final(strategy), one["saved_6"], exact=True)
    run_steps(strategy, 7, 8)
    check_masked(strategy)
    assert_sharded(strategy)
    assert strategy.sparsity.num_updates == first["straight"]["updates"][1]


@pytest.mark.dist
@pytest.mark.slow
def test_fsdp2_reshards_2_to_1_to_2_ranks_and_resumes_exactly(tmp_path) -> None:
    root, first, one = tmp_path / "ckpt", tmp_path / "first.pt", tmp_path / "one.pt"
    run_workers(_two_ranks_first, 2, root, first)
    run_workers(_one_rank, 1, root, one)
    run_workers(_two_ranks_again, 2, root, first, one)
    assert (checkpoint_dir(root, 6) / ".metadata").is_file()


def test_fsdp2_takes_a_channels_last_model_and_input() -> None:
    """train.channels_last (GPU) hands FSDP2 channels_last weights, which it cannot shard:
    the strategy makes them contiguous; channels_last inputs still run."""
    from ft_dist.bench.gpu_strategy import one_rank_group

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    with one_rank_group(cpu):
        strategy = build_strategy(
            model.to(memory_format=torch.channels_last),
            train=TrainConfig(strategy="fsdp2"),
            optim=OptimConfig(name="sgd", lr=0.1, momentum=0.9),
            sparsity=SparsityConfig(density=0.3, update_every_steps=1),
            micro_batch_size=4,
            device=cpu,
            world_size=1,
        )
        images = torch.randn(4, 3, 6, 6).contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(strategy.model(images), torch.tensor([0, 1, 2, 3]))
        strategy.backward(loss, True)
        strategy.step()
        assert strategy.sparsity.num_updates == 1
        for name, param in strategy.module.named_parameters():
            assert isinstance(param, DTensor) and param.to_local().is_contiguous(), name


class TokenMixer(nn.Module):
    """nn.MultiheadAttention reads its out_proj's weight without calling out_proj."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attention = nn.MultiheadAttention(8, num_heads=2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens)
        return self.head(self.attention(hidden, hidden, hidden)[0].mean(dim=1))


# nn.MultiheadAttention returns a view; nothing here modifies it in place
@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module .* returned a view tensor")
def test_fsdp2_units_keep_a_weight_its_parent_reads_in_the_parent_unit() -> None:
    from ft_dist.bench.gpu_strategy import one_rank_group
    from ft_dist.train.strategies.fsdp2 import shard_units

    model = TokenMixer()
    assert shard_units(model) == [model.head, model.attention, model.embed]  # not out_proj
    cpu = torch.device("cpu")
    with one_rank_group(cpu):
        strategy = build_strategy(
            model,
            train=TrainConfig(strategy="fsdp2"),
            optim=OptimConfig(name="adamw", lr=1e-2),
            sparsity=SparsityConfig(density=0.5, update_every_steps=1),
            micro_batch_size=2,
            device=cpu,
            world_size=1,
        )
        loss = strategy.model(torch.randn(2, 5, 4)).logsumexp(dim=1).mean()
        strategy.backward(loss, True)
        strategy.step()
        assert strategy.sparsity.num_updates == 1
        assert "attention.out_proj.weight" in strategy.sparsity.sparse_names
