"""sparse/health.py: the grown-weight survival counts of the engine, and the warnings made
of them or predicted before a run."""

from __future__ import annotations

import math

import torch
from torch import nn

from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.sparse.health import (
    LOW_KEPT,
    UNFIT_LOSS,
    churn_warning,
    initial_drop_threshold,
    no_update_warning,
    predicted_churn,
    updates_in_run,
)


def _layer_engine(drop: str, growth: str = "random", fraction: float = 0.25):
    layer = nn.Linear(8, 4, bias=False)
    config = SparsityConfig(
        density=0.5, sparse_init="uniform", drop=drop, growth=growth,
        update_every_steps=1, drop_fraction=fraction, check_consistency=False,
    )  # fmt: skip
    return layer, DynamicSparsity(nn.Sequential(layer), None, config)


def _set_active_(layer: nn.Linear, sparsity: DynamicSparsity, value: float) -> None:
    """Every active weight to ``value`` except the grown-at-0 ones; a unit gradient."""
    with torch.no_grad():
        mask = sparsity.masks["0.weight"]
        grown = sparsity.last_grown["0.weight"]
        layer.weight.copy_(torch.where(mask & ~grown, value, 0.0))
    layer.weight.grad = torch.ones_like(layer.weight)


def test_grown_weights_left_at_zero_are_counted_lost_at_the_next_update() -> None:
    layer, sparsity = _layer_engine("magnitude")
    _set_active_(layer, sparsity, 1.0)
    sparsity.step()  # no optimizer: the 4 grown weights stay at 0
    assert sparsity.stats().get("sparse/grown_kept") is None  # nothing to compare yet
    grown = int(sparsity.last_grown["0.weight"].sum())
    assert grown == 4
    _set_active_(layer, sparsity, 1.0)
    sparsity.step()  # the 4 smallest active weights are the 4 grown ones, at 0
    stats = sparsity.stats()
    assert sparsity.grown_kept == (0, 4)
    assert stats["sparse/grown_kept"] == 0.0 and stats["sparse/grown_kept_run"] == 0.0
    # 16 active of 32, 4 of them grown and expected lost again: 12 train for real.
    assert stats["sparse/effective_density"] == 12 / 32


def test_a_grace_period_exempts_the_last_grown_and_drops_fewer() -> None:
    layer, sparsity = _layer_engine("magnitude-grace")
    _set_active_(layer, sparsity, 1.0)
    sparsity.step()  # first update: no exemption, ceil(0.25 * 16) = 4 swapped
    assert sparsity.last_update["0.weight"][0] == 4
    grown = sparsity.last_grown["0.weight"].clone()
    _set_active_(layer, sparsity, 1.0)
    sparsity.step()
    assert torch.all(sparsity.masks["0.weight"][grown])  # all 4 survived at 0
    assert sparsity.grown_kept == (4, 4)
    assert sparsity.last_update["0.weight"][0] == 3  # ceil(0.25 * (16 - 4 exempt))


def test_mest_drop_keeps_a_small_weight_whose_gradient_is_large() -> None:
    layer, sparsity = _layer_engine("mest", fraction=1 / 16)  # one weight swapped
    mask = sparsity.masks["0.weight"]
    active = mask.nonzero().tolist()
    with torch.no_grad():
        layer.weight.zero_()
        for rank, (row, col) in enumerate(active):
            layer.weight[row, col] = 1.0 + rank
        layer.weight[active[0][0], active[0][1]] = 0.01  # magnitude alone would drop it
    layer.weight.grad = torch.full_like(layer.weight, 0.01)
    layer.weight.grad[active[0][0], active[0][1]] = 10.0
    sparsity.step()
    assert layer.weight[active[0][0], active[0][1]] == 0.01  # kept, with its value
    assert layer.weight[active[1][0], active[1][1]] == 0.0  # the next smallest went


def test_survival_counts_resume_from_the_state_dict() -> None:
    layer, sparsity = _layer_engine("magnitude")
    for _ in range(3):
        _set_active_(layer, sparsity, 1.0)
        sparsity.step()
    _, restored = _layer_engine("magnitude")
    restored.load_state_dict(sparsity.state_dict())
    assert restored.grown_kept == sparsity.grown_kept
    assert restored.grown_kept_run == sparsity.grown_kept_run
    assert torch.equal(restored.last_grown["0.weight"], sparsity.last_grown["0.weight"])


def test_the_churn_warning_fires_under_the_threshold_only() -> None:
    chance = math.log(10)
    assert churn_warning(0, 0, chance, 10) is None
    assert churn_warning(int(LOW_KEPT * 1000), 1000, chance, 10) is None
    text = churn_warning(20, 5716, 0.9 * chance, 10)
    assert text is not None and "20 of the 5716" in text and "drop_fraction" in text
    assert "90% of chance" in text


def test_low_survival_in_a_model_that_fits_its_data_is_not_told() -> None:
    """Each recipe's counts and epoch loss at the first epoch end where it keeps < 5 %
    (docs/dst_survival.md, 1 seed): configs/demo_dst.yaml's CNN fits the digits anyway; the
    patch transformer and the demo ViT, which lose to their static masks, do not."""
    assert churn_warning(1913, 41357, 0.169, 10) is None  # CNN: epoch 2, kept 4.6 %
    transformer = churn_warning(44, 9677, 2.011, 10)  # epoch 2, kept 0.45 %
    assert transformer is not None and "44 of the 9677" in transformer
    assert churn_warning(2473, 106285, 1.229, 10) is not None  # demo ViT: epoch 4, 2.3 %
    assert churn_warning(44, 9677, 0.99 * UNFIT_LOSS * math.log(10), 10) is None
    assert churn_warning(0, 100, 5.0, 1) is None  # one class: no chance level to compare


def test_the_prediction_compares_lr_times_dt_with_the_initial_drop_threshold() -> None:
    weights = {"w": torch.linspace(-1.0, 1.0, 2001)}
    assert abs(initial_drop_threshold(weights, 0.5) - 0.5) < 1e-3  # median of |U(-1, 1)|
    assert predicted_churn(2e-3, 25, 0.5, threshold=0.05) is not None  # reaches 0.005
    assert predicted_churn(2e-3, 1000, 0.5, threshold=0.05) is None  # reaches 0.2
    assert predicted_churn(2e-3, 25, 0.0, threshold=0.05) is None  # nothing is dropped
    # The demo ViT at f 0.3 (measured: loses) and at f 0.1 (measured: keeps 19-44 %): a
    # reach under the threshold but within the estimate's spread is not predicted to die.
    assert predicted_churn(1e-3, 25, 0.3, threshold=0.0078) is not None
    assert predicted_churn(1e-3, 25, 0.1, threshold=0.0026) is None


def test_a_delta_t_beyond_the_run_is_a_static_mask() -> None:
    assert updates_in_run(1000, 216, None) == 0
    assert updates_in_run(25, 216, None) == 8
    assert updates_in_run(25, 216, 100) == 4
    text = no_update_warning(1000, 216, None)
    assert text is not None and "update_every_steps = 1000" in text and "216" in text
    assert no_update_warning(25, 216, None) is None
