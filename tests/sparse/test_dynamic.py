import copy

import pytest
import torch

from ft_dist.sparse import DynamicSparsity, SparsityConfig
from tests.sparse.helpers import make_optimizer, tiny_cnn, train_step


def check_invariants(sparsity: DynamicSparsity, optimizer) -> None:
    for name in sparsity.sparse_names:
        weight, mask = sparsity.params[name], sparsity.masks[name]
        assert int(mask.sum()) == sparsity.num_active[name], name
        assert torch.all(weight[~mask] == 0), f"inactive weight nonzero in {name}"
        for key, state in optimizer.state[weight].items():
            if torch.is_tensor(state) and state.shape == weight.shape:
                assert torch.all(state[~mask] == 0), f"optimizer {key} nonzero at inactive {name}"


@pytest.mark.parametrize("optimizer_kind", ["sgd", "nesterov", "adamw"])
@pytest.mark.parametrize("growth", ["gradient", "random", "momentum", "fisher"])
def test_invariants_hold_after_every_step_and_update(optimizer_kind, growth):
    model = tiny_cnn()
    optimizer = make_optimizer(model, optimizer_kind)
    config = SparsityConfig(density=0.3, growth=growth, update_every_steps=2, drop_fraction=0.5)
    sparsity = DynamicSparsity(model, optimizer, config)
    masks_before = {n: m.clone() for n, m in sparsity.masks.items()}
    for step in range(8):
        previous = {n: m.clone() for n, m in sparsity.masks.items()}
        train_step(model, optimizer, sparsity, step)
        check_invariants(sparsity, optimizer)
        if sparsity.last_update and step % 2 == 1:
            for name in sparsity.sparse_names:
                grown = sparsity.masks[name] & ~previous[name]
                # Newly grown weights start at exactly 0 (they had no gradient step yet).
                assert torch.all(sparsity.params[name][grown] == 0)
    assert sparsity.num_updates == 4
    assert any(not torch.equal(masks_before[n], sparsity.masks[n]) for n in sparsity.sparse_names)


def test_grown_weights_and_their_state_are_zero_right_after_an_update():
    model = tiny_cnn()
    optimizer = make_optimizer(model, "sgd")
    sparsity = DynamicSparsity(
        model, optimizer, SparsityConfig(density=0.3, update_every_steps=1000)
    )
    for step in range(3):
        train_step(model, optimizer, sparsity, step)
    before = {n: m.clone() for n, m in sparsity.masks.items()}
    sparsity.explore(drop_fraction=0.8, growth="random")
    check_invariants(sparsity, optimizer)
    for name in sparsity.sparse_names:
        grown = sparsity.masks[name] & ~before[name]
        assert grown.any()
        assert torch.all(sparsity.params[name][grown] == 0)
        buffer = optimizer.state[sparsity.params[name]]["momentum_buffer"]
        assert torch.all(buffer[grown] == 0)


def test_inactive_weights_stay_zero_under_momentum_and_weight_decay_without_updates():
    model = tiny_cnn()
    optimizer = make_optimizer(model, "nesterov")
    sparsity = DynamicSparsity(model, optimizer, SparsityConfig(density=0.1, update="none"))
    initial = {n: m.clone() for n, m in sparsity.masks.items()}
    for step in range(10):
        train_step(model, optimizer, sparsity, step)
        check_invariants(sparsity, optimizer)
    assert all(torch.equal(initial[n], sparsity.masks[n]) for n in initial)  # static masks


def test_density_one_reproduces_dense_training_bit_for_bit():
    dense_model, sparse_model = tiny_cnn(seed=3), tiny_cnn(seed=3)
    dense_opt, sparse_opt = make_optimizer(dense_model, "sgd"), make_optimizer(sparse_model, "sgd")
    sparsity = DynamicSparsity(sparse_model, sparse_opt, SparsityConfig(density=1.0))
    for step in range(6):
        train_step(dense_model, dense_opt, None, step)
        train_step(sparse_model, sparse_opt, sparsity, step)
    for (name, a), (_, b) in zip(
        dense_model.state_dict().items(), sparse_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("growth", ["gradient", "random", "momentum"])
def test_state_dict_resume_is_bit_identical(growth):
    config = SparsityConfig(density=0.25, growth=growth, update_every_steps=3)
    model = tiny_cnn(seed=5)
    optimizer = make_optimizer(model, "adamw")
    sparsity = DynamicSparsity(model, optimizer, config)
    for step in range(7):
        train_step(model, optimizer, sparsity, step)
    saved = copy.deepcopy(
        {
            "model": model.state_dict(),
            "opt": optimizer.state_dict(),
            "sparse": sparsity.state_dict(),
        }
    )
    for step in range(7, 14):
        train_step(model, optimizer, sparsity, step)

    resumed_model = tiny_cnn(seed=99)  # different init: everything must come from the state
    resumed_opt = make_optimizer(resumed_model, "adamw")
    resumed = DynamicSparsity(resumed_model, resumed_opt, config.model_copy(update={"seed": 7}))
    resumed_model.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    resumed.load_state_dict(saved["sparse"])
    for step in range(7, 14):
        train_step(resumed_model, resumed_opt, resumed, step)

    for (name, a), (_, b) in zip(
        model.state_dict().items(), resumed_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    for name in sparsity.masks:
        assert torch.equal(sparsity.masks[name], resumed.masks[name]), name
    assert sparsity.num_updates == resumed.num_updates == 4


def test_loading_state_from_another_density_or_model_is_refused():
    model = tiny_cnn()
    sparsity = DynamicSparsity(model, None, SparsityConfig(density=0.3))
    other_density = DynamicSparsity(tiny_cnn(), None, SparsityConfig(density=0.5))
    with pytest.raises(ValueError, match="density 0.5.*sparsity.density=0.3"):
        sparsity.load_state_dict(other_density.state_dict())
    bigger = torch.nn.Sequential(torch.nn.Linear(5, 5))
    other_model = DynamicSparsity(bigger, None, SparsityConfig(density=0.3))
    with pytest.raises(ValueError, match="another model"):
        sparsity.load_state_dict(other_model.state_dict())


def test_masks_and_stats_are_reported_by_layer():
    model = tiny_cnn()
    optimizer = make_optimizer(model, "sgd")
    sparsity = DynamicSparsity(model, optimizer, SparsityConfig(density=0.3, update_every_steps=1))
    train_step(model, optimizer, sparsity, 0)
    stats = sparsity.stats()
    assert set(sparsity.masks) == {"0.weight", "3.weight", "7.weight"}
    assert stats["sparse/num_updates"] == 1
    assert stats["sparse/dropped"] == stats["sparse/grown"] > 0
    assert 0 < stats["sparse/turnover"] <= 0.5 + 1e-9
    assert stats["sparse/ever_active"] > stats["sparse/density"]
    total = sum(p.numel() for p in sparsity.params.values())
    assert stats["sparse/density"] == pytest.approx(0.3, abs=len(sparsity.params) / total)
    assert "sparse/layer/3.weight/density" in stats


def test_gradient_explore_without_gradients_is_a_clear_error():
    model = tiny_cnn()
    sparsity = DynamicSparsity(model, None, SparsityConfig(density=0.3))
    with pytest.raises(ValueError, match="loss.backward"):
        sparsity.explore(0.5, growth="gradient")


def test_channels_last_weights_keep_every_invariant():
    # GPU runs use channels_last; masks are in logical positions whatever the memory format.
    model = tiny_cnn().to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, "sgd")
    sparsity = DynamicSparsity(model, optimizer, SparsityConfig(density=0.3, update_every_steps=2))
    before = {n: m.clone() for n, m in sparsity.masks.items()}
    for step in range(4):
        train_step(model, optimizer, sparsity, step)
        check_invariants(sparsity, optimizer)
    sparsity.explore(0.8, growth="random")
    check_invariants(sparsity, optimizer)
    assert sparsity.params["0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert any(not torch.equal(before[n], sparsity.masks[n]) for n in sparsity.sparse_names)
