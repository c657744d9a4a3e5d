"""The optimizers: one table, `OPTIMIZERS`, the only list of their names (torch-free).

An entry builds the torch optimizer from the config's parameter groups, names the
per-weight state tensors it keeps (DeepSpeed's resets reach them by key; the disk-space
estimate counts them), and gives the settings a benchmark step uses (`ft-dist bench step`).
A new optimizer is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ft_dist.utils import table_entry

if TYPE_CHECKING:
    import torch

    from ft_dist.train.config import OptimConfig


@dataclass(frozen=True)
class OptimizerEntry:
    summary: str
    build: Callable[[list[dict], OptimConfig], torch.optim.Optimizer]
    state_keys: Callable[[OptimConfig], tuple[str, ...]]  # per-weight state tensors
    typical: dict[str, Any] = field(default_factory=dict)  # OptimConfig values of a bench step
    needs_momentum: bool = False  # refuses optim.momentum = 0
    # Each step moves a weight by about lr whatever its gradient's scale (Adam-like): lets
    # preflight predict whether weights grown at 0 survive the next DST update.
    moves_by_lr: bool = False


def _sgd(nesterov: bool) -> Callable[[list[dict], OptimConfig], torch.optim.Optimizer]:
    def build(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
        import torch

        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=nesterov,
        )

    return build


def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def _momentum_state(cfg: OptimConfig) -> tuple[str, ...]:
    return ("momentum_buffer",) if cfg.momentum > 0 else ()


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(
        "SGD with momentum (the paper's optimizer)", _sgd(nesterov=False), _momentum_state
    ),
    "sgd-nesterov": OptimizerEntry(
        "SGD with Nesterov momentum", _sgd(nesterov=True), _momentum_state, needs_momentum=True
    ),
    "adamw": OptimizerEntry(
        "AdamW (decoupled weight decay; attention models)",
        _adamw,
        lambda cfg: ("exp_avg", "exp_avg_sq"),
        typical={"lr": 1e-3, "weight_decay": 0.05},
        moves_by_lr=True,
    ),
}


def optimizer_entry(name: str) -> OptimizerEntry:
    return table_entry(OPTIMIZERS, name, "optim.name")
