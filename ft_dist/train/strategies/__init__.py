"""Data-parallel strategies: one table, `STRATEGIES`, one module per entry.

The table is torch-free (config validation and ``--help`` read it); an entry's class is
imported when a run builds it. Each entry carries every fact the rest of the code asks:
whether the dense gradient can be read at every step, which ``train.*`` options apply,
whether it keeps fp32 master copies (checkpoint size), whether it shards every layer across
ranks (then what needs whole layers is refused), and whether its checkpoint state is
partitioned per rank (then a resume needs the same number of workers). A new strategy is
one module here (a `Strategy` subclass, see base.py) plus its line in the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ft_dist.sparse.scores import GROWTH_SCORES, drop_criterion, growth_criterion
from ft_dist.utils import table_entry

if TYPE_CHECKING:
    from ft_dist.sparse.config import SparsityConfig
    from ft_dist.train.config import TrainConfig
    from ft_dist.train.strategies.base import Strategy


@dataclass(frozen=True)
class StrategyEntry:
    """A strategy and what it can do; config validation, checkpoints and --help read it."""

    load: Callable[[], type[Strategy]]  # the class, imported on first use (torch)
    summary: str
    # Can the dense gradient be read at every step (EMA growth criteria, the official CIFAR
    # inactive_momentum=keep)? Not under ZeRO: reassembling the full gradient from its
    # partitions at every step would defeat ZeRO's memory savings.
    every_step_dense_gradient: bool
    options: tuple[str, ...]  # train.* options that apply to this strategy only
    fp32_masters: bool  # keeps its own fp32 copy of the weights (checkpoint size)
    # Is every layer split across ranks (no rank holds a whole weight)? Then the sparsity
    # settings that trace or rewrite whole layers are refused: channel-level DST (its
    # structure tracing and channel cut) and the sparsity.compat modes (sparse/official.py
    # works on whole layers).
    shards_layers: bool
    # Is this rank's checkpoint state a partition laid out for the world size it was
    # written at? Then a resume, and an elastic run, needs that same world size.
    per_rank_partitions: Callable[[TrainConfig], bool]
    world_size_rule: str  # what to change when per_rank_partitions refuses a world size
    # `train:` options that run it at its most demanding, for the contract tests
    # (tests/train/test_contracts.py)
    example: dict = field(default_factory=dict)

    @property
    def zero_stages(self) -> bool:
        return "zero_stage" in self.options

    def resumes_at_any_world_size(self, train: TrainConfig) -> bool:
        return not self.per_rank_partitions(train)

    def checkpoint_meta(self, train: TrainConfig) -> dict[str, Any]:
        """What a checkpoint records of the strategy; a resume must match it."""
        return {
            "strategy": train.strategy,
            "zero_stage": train.zero_stage if self.zero_stages else 0,
            "per_rank_partitions": self.per_rank_partitions(train),
        }


def _ddp() -> type[Strategy]:
    from ft_dist.train.strategies.ddp import DDPStrategy

    return DDPStrategy


def _fsdp2() -> type[Strategy]:
    from ft_dist.train.strategies.fsdp2 import FSDP2Strategy

    return FSDP2Strategy


def _deepspeed() -> type[Strategy]:
    from ft_dist.train.strategies.deepspeed import DeepSpeedStrategy

    return DeepSpeedStrategy


STRATEGIES: dict[str, StrategyEntry] = {
    "ddp": StrategyEntry(
        _ddp,
        "torch DistributedDataParallel (gloo on CPU, nccl on GPU)",
        every_step_dense_gradient=True,
        options=(),
        fp32_masters=False,
        shards_layers=False,
        per_rank_partitions=lambda train: False,
        world_size_rule="",
    ),
    "deepspeed": StrategyEntry(
        _deepspeed,
        "DeepSpeed engine, ZeRO stage 0/1/2, bf16 weights on GPU",
        every_step_dense_gradient=False,
        options=("zero_stage",),
        fp32_masters=True,
        shards_layers=False,  # ZeRO-1/2 partition optimizer state and gradients only
        per_rank_partitions=lambda train: train.zero_stage > 0,
        world_size_rule="needs train.zero_stage=0 (or strategy=ddp): ZeRO checkpoints are "
        "partitioned per rank and cannot resume on another world size",
        example={"zero_stage": 2},
    ),
    "fsdp2": StrategyEntry(
        _fsdp2,
        "torch FSDP2 (fully_shard): parameters, gradients, optimizer and DST state sharded "
        "per rank; bf16 compute with fp32 reduction on GPU",
        every_step_dense_gradient=True,  # the dense gradient shard is on .grad every step
        options=(),
        fp32_masters=False,
        shards_layers=True,
        # torch.distributed.checkpoint reshards on load: any world size resumes
        per_rank_partitions=lambda train: False,
        world_size_rule="",
    ),
}


def strategy_entry(name: str) -> StrategyEntry:
    return table_entry(STRATEGIES, name, "train.strategy")


def check_strategy_supports(name: str, sparsity: SparsityConfig) -> None:
    """Refuse a sparsity setting the strategy cannot run, naming what to change."""
    entry = strategy_entry(name)
    if entry.shards_layers:
        check_whole_layer_settings(name, sparsity)
    if entry.every_step_dense_gradient or not sparsity.is_dynamic:
        return
    culprits = [
        f"sparsity.{key}={value}"
        for key, value, criterion in (
            ("growth", sparsity.growth, growth_criterion(sparsity.growth)),
            ("drop", sparsity.drop, drop_criterion(sparsity.drop)),
        )
        if criterion.needs_every_step_gradient
    ]
    if sparsity.inactive_momentum == "keep":
        culprits.append("sparsity.inactive_momentum=keep")
    if culprits:
        fine = [n for n, c in GROWTH_SCORES.items() if not c.needs_every_step_gradient]
        raise ValueError(
            f"{' and '.join(culprits)} reads the full gradient at every step, which "
            f"train.strategy={name} does not provide: use sparsity.growth "
            f"{' or '.join(fine)} with inactive_momentum=zero (or train.strategy=ddp)"
        )


def check_whole_layer_settings(name: str, sparsity: SparsityConfig) -> None:
    """Refuse, for a strategy that shards every layer, the settings that need whole layers."""
    balanced = GROWTH_SCORES[sparsity.growth].balanced
    needs_whole_layers = {
        "channel_sparsity": (sparsity.channel_sparsity > 0.0, sparsity.channel_sparsity, "0"),
        "compat": (sparsity.compat != "none", sparsity.compat, "none"),
        "growth": (balanced, sparsity.growth, sparsity.growth.removesuffix("-balanced")),
    }
    for key, (is_set, value, off) in needs_whole_layers.items():
        if is_set:
            raise ValueError(
                f"sparsity.{key}={value} needs whole layers on every rank, and "
                f"train.strategy={name} shards them: set sparsity.{key}={off} "
                "(or train.strategy=ddp)"
            )
