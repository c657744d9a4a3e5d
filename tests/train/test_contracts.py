"""Contract tests over the tables of train/: every ensemble method, strategy and optimizer
(and every data recipe) trains in the loop every Ray worker runs, resumes bit-identically
from a mid-epoch checkpoint, and is priced by `ft-dist flops --config`; a new entry is tested
here with no test written for it (the criteria: tests/sparse/test_criteria_contract.py; the
model families: tests/models/test_families.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ft_dist.data.transforms import RECIPES
from ft_dist.train.methods import ENSEMBLE_METHODS
from ft_dist.train.optim import build_optimizer
from ft_dist.train.optimizers import OPTIMIZERS, optimizer_entry
from ft_dist.train.strategies import STRATEGIES
from tests.gloo_workers import run_workers
from tests.train.conftest import tiny_config
from tests.train.test_loop import (
    assert_same_training_state,
    final_state,
    resume_on_every_rank,
    run_loop,
    trains_resumes_and_is_priced,
)

# 8 steps per epoch; a DST update every 3 steps; a checkpoint at step 4 (mid-epoch).
TRAIN = {"checkpoint_every_steps": 4, "keep_checkpoints": 10, "ticket": "last"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ENSEMBLE_METHODS)
def test_every_methodtrains_resumes_and_is_priced(
    method: str, tiny_mnist: Path, tmp_path: Path, capsys
) -> None:
    entry = ENSEMBLE_METHODS[method]
    train = TRAIN if entry.own_schedule else {**TRAIN, "epochs": 2}  # 2: room for 2 members
    ensemble = {"method": method, **entry.example}
    cfg = tiny_config(tiny_mnist, tmp_path / "a", train=train, ensemble=ensemble)
    summary, _, _ = trains_resumes_and_is_priced(cfg, tmp_path, capsys)
    # A run yields its share of the ensemble: all of it, or one member of separate runs.
    expected = 1 if entry.separate_runs else cfg.ensemble.num_members
    assert len(summary["tickets"]) == expected


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizertrains_resumes_and_is_priced(
    optimizer: str, tiny_mnist: Path, tmp_path: Path, capsys
) -> None:
    optim = {"name": optimizer, **optimizer_entry(optimizer).typical}
    cfg = tiny_config(tiny_mnist, tmp_path / "a", train={**TRAIN, "epochs": 1}, optim=optim)
    trains_resumes_and_is_priced(cfg, tmp_path, capsys)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_names_the_state_it_keeps(optimizer: str) -> None:
    """DeepSpeed zeroes inactive positions in the state tensors an entry names: they must be
    exactly the per-weight tensors the built optimizer keeps."""
    cfg = tiny_config(Path("."), Path("."), optim={"name": optimizer}).optim
    model = torch.nn.Linear(3, 2)
    optim = build_optimizer(cfg, model)
    model(torch.randn(4, 3)).sum().backward()
    optim.step()
    state = optim.state[model.weight]
    kept = {k for k, v in state.items() if torch.is_tensor(v) and v.shape == model.weight.shape}
    assert kept == set(optimizer_entry(optimizer).state_keys(cfg))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_a_step(recipe: str, tiny_mnist: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        tiny_mnist,
        tmp_path,
        data={"recipe": recipe, "image_size": 32},
        train={"epochs": 1, "ticket": "last"},
    )
    summary, _, _ = run_loop(cfg)
    assert summary["steps"] == 8 and 0.0 <= summary["metrics"]["test/accuracy"] <= 1.0


def _strategy_worker(rank: int, world_size: int, strategy: str, root: Path, out: Path) -> None:
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    train = {"epochs": 1, "strategy": strategy, **STRATEGIES[strategy].example}
    train.update(checkpoint_every_steps=2, keep_checkpoints=5)
    cfg = tiny_config(root, out / "a", train=train, sparsity={"update_every_steps": 1})
    summary, _, _ = run_loop(cfg)
    assert summary["steps"] == 4 and summary["sparse/num_updates"] == 4
    resumed = resume_on_every_rank(cfg, rank, 2, 4, out / "b")
    if rank == 0:
        assert_same_training_state(final_state(cfg), final_state(resumed))


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_resumes_exactly_on_two_ranks(
    strategy: str, tiny_mnist: Path, tmp_path: Path
) -> None:
    run_workers(_strategy_worker, 2, strategy, tiny_mnist, tmp_path)
