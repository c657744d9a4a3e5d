"""`ft-dist bench memory`'s arithmetic: storages counted once, first category wins, the
rest is ``other``, ratios to DDP per model, the goal; and its table."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from ft_dist.bench.memory import (
    CATEGORIES,
    categorise,
    engine_tensors,
    format_table,
    largest_rank,
    storage_bytes,
    summarise,
)


def test_a_storage_counts_once_whatever_its_views() -> None:
    base = torch.zeros(10, 4)  # 160 bytes
    other = torch.zeros(3, dtype=torch.float64)  # 24 bytes
    found = storage_bytes([base, base[2:5], base.view(40), other, torch.zeros(5, device="meta")])
    assert sorted(found.values()) == [24, 160]


def test_categories_take_each_storage_once_in_order_and_the_rest_is_other() -> None:
    weight, grad, momentum, mask = torch.zeros(8), torch.zeros(8), torch.zeros(8), torch.ones(8)
    batch = torch.zeros(2, 3)
    known = {
        "parameters": [weight],
        "gradients": [grad, weight[:4]],  # a view of a parameter stays a parameter
        "optimizer": [momentum],
        "dst": [mask.bool(), mask],
    }
    counts = categorise(known, [weight, grad, momentum, mask, batch])
    assert counts == {
        "parameters": 32, "gradients": 32, "optimizer": 32, "dst": 8 + 32, "other": 24,
        "total": 32 * 3 + 40 + 24,
    }  # fmt: skip
    assert set(CATEGORIES) | {"total"} == counts.keys()


def row(model: str, strategy: str, total: int, seconds: float) -> dict:
    counts = dict.fromkeys(CATEGORIES, 0) | {"parameters": total, "total": total}
    return {
        "model": model, "strategy": strategy, "world_size": 2, "batch_size": 2,
        "density": 0.2, "max_rank": counts, "step_seconds": seconds,
    }  # fmt: skip


def test_ratios_are_to_ddp_of_the_same_model_and_the_goal_reads_fsdp2() -> None:
    rows = [
        row("wrn", "ddp", 1000, 2.0),
        row("wrn", "fsdp2", 500, 3.0),
        row("vit", "ddp", 400, 1.0),
        row("vit", "fsdp2", 240, 1.5),
    ]
    result = summarise(rows)
    assert [r["bytes_vs_ddp"] for r in rows] == [1.0, 0.5, 1.0, 0.6]
    assert [r["step_time_vs_ddp"] for r in rows] == [1.0, 1.5, 1.0, 1.5]
    assert result["goal_met"] is False  # vit: 0.6 > 0.55
    rows[3]["max_rank"]["total"] = 220
    assert summarise(rows)["goal_met"] is True
    table = format_table(summarise(rows))
    assert "vit        fsdp2" in table and "0.550" in table and "goal" in table


def test_the_largest_rank_is_reported() -> None:
    assert largest_rank([{"total": 5}, {"total": 7}, {"total": 6}]) == {"total": 7}


def test_engine_tensors_are_its_state_not_the_parameters() -> None:
    from ft_dist.sparse import DynamicSparsity, SparsityConfig

    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    sparsity = DynamicSparsity(model, None, SparsityConfig(density=0.5, growth="momentum"))
    found = storage_bytes(engine_tensors(sparsity))
    params = storage_bytes(model.parameters())
    assert found and not found.keys() & params.keys()
    assert sparsity.sparse_names == ["0.weight", "1.weight"]  # 30 + 15 weights
    # per weight: mask, ever-active mask and the last update's grown positions (bool, 1 byte
    # each), float mask and momentum growth's gradient EMA (fp32, 4 bytes each)
    assert sum(found.values()) == (30 + 15) * (1 + 1 + 1 + 4 + 4)


def test_bad_settings_are_refused_in_one_line() -> None:
    from ft_dist.bench.memory import run

    args = argparse.Namespace(world_size=1, steps=1, batch_size=1, warmup=1)
    with pytest.raises(ValueError, match="--world-size >= 2"):
        run(args)
