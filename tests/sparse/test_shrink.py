"""The engine's cut (`DynamicSparsity.cut_channels_`) in a plain PyTorch loop: a model
that cuts its removed channels out at every removal trains exactly as its masked twin
(same masks, the same weights at the kept positions, the same optimizer state), and a
cut model's masks go back to the full shapes (`full_masks`) as the masked twin's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ft_dist.models import build_model
from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.sparse.slim import full_masks, full_tensor, slim_tensor


def _train(shrink: bool, growth: str, optimizer_name: str, name: str = "small-cnn"):
    torch.manual_seed(0)
    channels, size = (1, 28) if name == "small-cnn" else (3, 32)
    model = build_model(name, 10, channels, size).double()
    for module in model.modules():  # dropout draws a mask shaped like the (cut) activation
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    config = SparsityConfig(
        density=0.2, update_every_steps=2, channel_sparsity=0.5, channel_end_step=6,
        growth=growth, channel_shrink=shrink,
    )  # fmt: skip
    sparsity = DynamicSparsity(model, optimizer, config, input_shape=(channels, size, size))
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(10):
        images = torch.rand(16, channels, size, size, generator=generator, dtype=torch.float64)
        labels = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        sparsity.step()
        if sparsity.cut_pending():
            sparsity.cut_channels_()
        losses.append(float(loss.detach()))
    return model, optimizer, sparsity, losses


@pytest.mark.parametrize(("growth", "optimizer"), [("gradient", "sgd"), ("random", "adamw")])
def test_a_cut_model_trains_as_its_masked_twin(growth: str, optimizer: str) -> None:
    masked_model, masked_opt, masked, masked_losses = _train(False, growth, optimizer)
    slim_model, slim_opt, slim, slim_losses = _train(True, growth, optimizer)
    assert slim.channels.num_removed() == masked.channels.num_removed() == 112
    assert torch.testing.assert_close(slim_losses, masked_losses, rtol=1e-12, atol=0) is None
    slim_params = dict(slim_model.named_parameters())
    size = sum(p.numel() for p in slim_model.parameters())  # physically smaller
    assert size < 0.7 * sum(p.numel() for p in masked_model.parameters())
    example = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    removed = slim.channels.cut_record()
    want = masked.masks
    got = full_masks(build_model("small-cnn", 10, 1, 28).double(), example, removed, slim.masks)
    assert all(torch.equal(got[n], want[n]) for n in want)
    layout = slim.channels.layout()
    for name, param in masked_model.named_parameters():  # weights and state at kept positions
        full_shape, dims = layout.get(name, (tuple(param.shape), {}))
        kept = {
            d: torch.zeros(full_shape[d], dtype=torch.bool).index_fill_(0, i, True)
            for d, i in dims.items()
        }
        torch.testing.assert_close(slim_params[name], slim_tensor(param.detach(), kept))
        want_state = masked_opt.state[param]
        got_state = slim_opt.state[slim_params[name]]
        for key, value in want_state.items():
            if value.shape == param.shape:
                torch.testing.assert_close(got_state[key], slim_tensor(value, kept), msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:mobilenet_v3_small"])
def test_models_with_residual_sums_and_gates_train_as_their_masked_twins(name: str) -> None:
    """Off the demo's path: residual sums (resnet18) and depthwise convs with
    squeeze-excitation gates (mobilenet_v3_small; the groups its trial cut refuses stay
    whole), in float64. Dropout is off: its random mask has the activation's shape, so a
    cut layer draws other masks (README: the one documented exception)."""
    _, _, masked, masked_losses = _train(False, "gradient", "sgd", name)
    model, _, slim, slim_losses = _train(True, "gradient", "sgd", name)
    assert slim.channels.num_removed() == masked.channels.num_removed() > 0
    torch.testing.assert_close(slim_losses, masked_losses, rtol=1e-9, atol=0)
    assert all(torch.equal(slim.masks[n].sum(), masked.masks[n].sum()) for n in slim.masks)


def test_full_tensor_inverts_slim_tensor() -> None:
    keep = {0: torch.tensor([True, False, True]), 1: torch.tensor([False, True])}
    full = torch.arange(6.0).view(3, 2) + 1
    slim = slim_tensor(full, keep)
    assert slim.tolist() == [[2.0], [6.0]]
    assert full_tensor(slim, keep).tolist() == [[0.0, 2.0], [0.0, 0.0], [0.0, 6.0]]
