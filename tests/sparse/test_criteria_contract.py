"""Contract tests over the criteria tables: every entry of GROWTH_SCORES and DROP_SCORES,
with no test written for it, trains one short epoch in the loop every Ray worker runs,
resumes bit-identically from a mid-epoch checkpoint, is priced by `ft-dist flops --config`
and is accepted or refused by each strategy as its table entry says."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.sparse.config import SparsityConfig
from ft_dist.sparse.scores import DROP_SCORES, GROWTH_SCORES
from ft_dist.train.strategies import STRATEGIES, check_strategy_supports
from tests.train.conftest import tiny_config
from tests.train.test_loop import trains_resumes_and_is_priced

CRITERIA = [("growth", name) for name in GROWTH_SCORES] + [("drop", name) for name in DROP_SCORES]


def _ids(case: tuple[str, str]) -> str:
    return f"{case[0]}-{case[1]}"


@pytest.mark.slow
@pytest.mark.parametrize("case", CRITERIA, ids=_ids)
def test_criterion_trains_resumes_and_is_priced(
    case: tuple[str, str], tiny_mnist: Path, tmp_path: Path, capsys
) -> None:
    key, name = case
    # 8 steps in one epoch; an update every 3 steps; a checkpoint at step 4 (between updates).
    cfg = tiny_config(
        tiny_mnist,
        tmp_path / "a",
        sparsity={key: name, "update_every_steps": 3},
        train={"epochs": 1, "checkpoint_every_steps": 4, "keep_checkpoints": 5, "ticket": "last"},
    )
    _, tracker, priced = trains_resumes_and_is_priced(cfg, tmp_path, capsys)
    updates = [m["sparse/num_updates"] for _, m in tracker.logged if "sparse/num_updates" in m]
    assert updates and max(updates) >= 1  # the criterion really ran
    assert priced["settings"][key if key == "growth" else "growth"] == cfg.sparsity.growth
    assert 0.0 < priced["run"]["train_relative"] < 1.0  # d = 0.2 costs less than dense


@pytest.mark.parametrize("case", CRITERIA, ids=_ids)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategies_accept_what_their_entry_supports(case: tuple[str, str], strategy: str):
    key, name = case
    sparsity = SparsityConfig(**{key: name})
    table = GROWTH_SCORES if key == "growth" else DROP_SCORES
    refused = table[name].needs_every_step_gradient and not (
        STRATEGIES[strategy].every_step_dense_gradient
    )
    # Balanced growth chooses per output unit over whole layers: refused where they're sharded.
    whole_layers = table[name].balanced and STRATEGIES[strategy].shards_layers
    if refused:
        with pytest.raises(ValueError, match=f"sparsity.{key}={name} reads the full gradient"):
            check_strategy_supports(strategy, sparsity)
    elif whole_layers:
        with pytest.raises(ValueError, match=f"sparsity.{key}={name} needs whole layers"):
            check_strategy_supports(strategy, sparsity)
    else:
        check_strategy_supports(strategy, sparsity)


def test_saliency_drop_removes_the_smallest_weight_times_gradient() -> None:
    import torch
    from torch import nn

    from ft_dist.sparse import DynamicSparsity

    layer = nn.Linear(4, 2, bias=False)
    config = SparsityConfig(
        density=0.5, sparse_init="uniform", drop="saliency", growth="random",
        update_every_steps=1, drop_fraction=0.25, check_consistency=False,
    )  # fmt: skip
    sparsity = DynamicSparsity(nn.Sequential(layer), None, config)
    mask = sparsity.masks["0.weight"]
    active = mask.nonzero(as_tuple=False).tolist()
    with torch.no_grad():
        layer.weight.zero_()
        for rank, (row, col) in enumerate(active):
            layer.weight[row, col] = 1.0 + rank  # magnitude would drop active[0]
    layer.weight.grad = torch.ones_like(layer.weight)
    row, col = active[-1]
    layer.weight.grad[row, col] = 1e-6  # |w·g| is smallest at the largest weight
    sparsity.step()  # no optimizer: only the update moves weights
    # The largest weight was dropped (a dropped weight is 0, and so is one re-grown at once);
    # the smallest magnitude, which magnitude drop would have removed, kept its value.
    assert layer.weight[row, col] == 0.0
    assert layer.weight[active[0][0], active[0][1]] == 1.0
