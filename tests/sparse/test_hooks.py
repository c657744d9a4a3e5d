"""The engine's one hook point: before/after an optimizer step someone else takes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.sparse.scores import (
    DROP_SCORES,
    GROWTH_SCORES,
    Criterion,
    ScoreInputs,
    growth_criterion,
)
from tests.sparse.helpers import batch, make_optimizer, tiny_cnn

CONFIG = SparsityConfig(density=0.3, growth="gradient", update_every_steps=2, seed=3)


def backward(model: nn.Module, step: int) -> None:
    images, labels = batch(step)
    nn.functional.cross_entropy(model(images), labels).backward()


def test_hooks_around_an_outside_step_equal_step() -> None:
    """A strategy calling before/after around its own optimizer.step() trains bit for bit
    like the plain-loop `step()`; after() returns the reset positions only at updates."""
    runs = []
    for use_hooks in (False, True):
        model = tiny_cnn()
        optimizer = make_optimizer(model, "sgd")
        sparsity = DynamicSparsity(model, optimizer if not use_hooks else None, CONFIG)
        if use_hooks:  # the engine has no optimizer: the "strategy" steps and masks state
            sparsity.optimizer = optimizer
        resets_seen = []
        for step in range(6):
            optimizer.zero_grad(set_to_none=True)
            backward(model, step)
            if use_hooks:
                sparsity.before_optimizer_step()
                optimizer.step()
                resets_seen.append(sparsity.after_optimizer_step())
            else:
                sparsity.step()
        runs.append((model.state_dict(), dict(sparsity.masks), resets_seen))
    (weights_a, masks_a, _), (weights_b, masks_b, resets) = runs
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    assert all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)
    # Updates at steps 2, 4, 6 (dense gradients were read there): every inactive position is
    # in the reset set; between updates nothing is.
    assert [bool(r) for r in resets] == [False, True, False, True, False, True]
    for name, reset in resets[-1].items():
        assert torch.equal(reset & ~masks_b[name], ~masks_b[name])


def test_gradient_masking_hooks_zero_inactive_grads_except_when_dense_is_wanted() -> None:
    model = tiny_cnn()
    sparsity = DynamicSparsity(model, None, CONFIG)
    handles = sparsity.register_gradient_masking()
    backward(model, 0)  # step 1: no update due, so gradients arrive masked
    for name in sparsity.sparse_names:
        grad = sparsity.params[name].grad
        assert torch.count_nonzero(grad[~sparsity.masks[name]]) == 0
        assert torch.count_nonzero(grad[sparsity.masks[name]]) > 0
    sparsity.after_optimizer_step()
    model.zero_grad(set_to_none=True)
    assert sparsity.wants_dense_gradients()  # step 2 ends with a gradient-growth update
    backward(model, 1)
    assert any(
        torch.count_nonzero(sparsity.params[n].grad[~sparsity.masks[n]]) > 0
        for n in sparsity.sparse_names
    )
    for handle in handles:
        handle.remove()


def test_explore_with_given_gradients_returns_resets_and_keeps_counts() -> None:
    model = tiny_cnn()
    sparsity = DynamicSparsity(model, None, CONFIG)
    backward(model, 0)
    grads = {n: sparsity.params[n].grad.clone() for n in sparsity.sparse_names}
    model.zero_grad(set_to_none=True)  # explore must read the given gradients, not .grad
    resets = sparsity.explore(0.8, "gradient", grads=grads)
    assert set(resets) == set(sparsity.sparse_names)
    for name in sparsity.sparse_names:
        assert int(sparsity.masks[name].sum()) == sparsity.num_active[name]
        assert torch.count_nonzero(sparsity.params[name][resets[name]]) == 0


def test_inactive_momentum_keep_lets_momentum_build_on_inactive_weights() -> None:
    """inactive_momentum=keep (official CIFAR code): dense gradients reach SGD, so inactive
    weights gather momentum (weights still masked after the step); zero never does."""
    buffers = {}
    for mode in ("zero", "keep"):
        model = tiny_cnn()
        optimizer = make_optimizer(model, "sgd")
        config = CONFIG.model_copy(update={"inactive_momentum": mode, "update_every_steps": 100})
        sparsity = DynamicSparsity(model, optimizer, config)
        for step in range(3):
            optimizer.zero_grad(set_to_none=True)
            backward(model, step)
            sparsity.step()
        name = sparsity.sparse_names[0]
        weight, inactive = sparsity.params[name], ~sparsity.masks[name]
        assert torch.count_nonzero(weight.detach()[inactive]) == 0
        buffers[mode] = optimizer.state[weight]["momentum_buffer"][inactive]
    assert torch.count_nonzero(buffers["zero"]) == 0
    assert torch.count_nonzero(buffers["keep"]) > 0


def test_fisher_growth_scores_the_ema_of_squared_gradients() -> None:
    criterion = growth_criterion("fisher")
    assert criterion.ema_of is not None and not criterion.needs_gradient
    grad = torch.tensor([[-3.0, 1.0], [0.5, -0.1]])
    assert torch.equal(criterion.ema_of(grad), grad.square())
    ema = torch.tensor([[0.2, 0.9], [0.0, 0.4]])
    inputs = ScoreInputs(torch.zeros(2, 2), None, ema, torch.Generator())
    assert torch.equal(criterion.score(inputs), ema)
    # momentum scores |EMA of g|, fisher EMA of g²: a sign-flipping gradient differs.
    model = tiny_cnn()
    sparsity = DynamicSparsity(model, None, CONFIG.model_copy(update={"growth": "fisher"}))
    backward(model, 0)
    name = sparsity.sparse_names[0]
    # Before the hook masks .grad in place: the EMA reads the dense gradient.
    expected = (1 - sparsity.config.momentum_beta) * sparsity.params[name].grad.square()
    sparsity.before_optimizer_step()
    torch.testing.assert_close(sparsity.grad_emas["growth"][name], expected)


def test_unknown_growth_names_the_choices() -> None:
    with pytest.raises(ValueError, match=", ".join(GROWTH_SCORES)):
        growth_criterion("snip")


def test_a_drop_criterion_with_an_ema_reads_its_own(monkeypatch) -> None:
    """Growth keeping an EMA of g and drop an EMA of g²: each score receives its own EMA."""
    seen: dict[str, list[torch.Tensor]] = {"drop": [], "growth": []}

    def score(role: str):
        def read(inputs: ScoreInputs) -> torch.Tensor:
            seen[role].append(inputs.grad_ema.clone())
            return inputs.weight.abs() if role == "drop" else inputs.grad_ema.abs()

        return read

    monkeypatch.setitem(
        DROP_SCORES, "test-ema-drop", Criterion(score("drop"), "g²", ema_of=torch.square)
    )
    monkeypatch.setitem(
        GROWTH_SCORES, "test-ema-grow", Criterion(score("growth"), "g", ema_of=lambda g: g)
    )
    config = CONFIG.model_copy(update={"growth": "test-ema-grow", "drop": "test-ema-drop"})
    model = tiny_cnn()
    sparsity = DynamicSparsity(model, None, config)
    backward(model, 0)
    name = sparsity.sparse_names[0]
    grad = sparsity.params[name].grad.clone()  # dense, before the hook masks it
    sparsity.before_optimizer_step()
    sparsity.explore(0.5, "test-ema-grow")
    share = 1 - sparsity.config.momentum_beta
    torch.testing.assert_close(seen["drop"][0], share * grad.square())
    torch.testing.assert_close(seen["growth"][0], share * grad)
