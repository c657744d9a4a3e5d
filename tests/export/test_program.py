"""The serving form of the ensemble program: norms folded, channels_last, same function."""

from __future__ import annotations

import torch
from torch import nn

from ft_dist.export import EnsembleProgram, serving_program
from ft_dist.export.program import fold_norms
from ft_dist.private_api import batch_norm_base


class Blocks(nn.Module):
    """conv-BN (foldable), conv whose output also feeds a residual sum before its BN (not
    foldable: the sum needs the unnormalised output), linear-BN1d (foldable)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.shared_bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.fc_bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        y = self.shared(x)
        x = self.shared_bn(y) + y
        return self.fc_bn(self.fc(x.mean(dim=(2, 3))))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it symbolically."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x.mean(dim=(2, 3)) if x.sum() > 0 else -x.mean(dim=(2, 3))


def _trained_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, then eval mode."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, batch_norm_base()):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


def test_fold_norms_folds_what_follows_a_layer_and_keeps_the_function() -> None:
    model = _trained_statistics(Blocks())
    folded, count = fold_norms(model)
    assert count == 2  # bn and fc_bn; shared_bn stays (its conv output is used twice)
    kinds = [type(m) for m in folded.modules()]
    assert kinds.count(nn.BatchNorm2d) == 1 and nn.BatchNorm1d not in kinds
    images = torch.rand(5, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-5, atol=1e-5)
    assert model.bn.running_var.ne(1).any()  # the original is left untouched


def test_an_untraceable_model_is_served_unfolded() -> None:
    model = _trained_statistics(Branchy())
    folded, count = fold_norms(model)
    assert count == 0 and folded is model


def test_serving_program_is_channels_last_and_computes_the_same_probabilities() -> None:
    members = [_trained_statistics(Blocks()) for _ in range(3)]
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    program, folded = serving_program(members, mean, std)
    assert folded == [2, 2, 2]
    convs = [m for m in program.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    images = torch.rand(4, 3, 12, 12)
    with torch.no_grad():
        expected = EnsembleProgram(members, mean, std)(images)
        torch.testing.assert_close(program(images), expected, rtol=1e-5, atol=1e-6)


def test_a_grey_scale_stem_hands_on_channels_last_activations() -> None:
    from ft_dist.models import build_model

    model = _trained_statistics(build_model("small-cnn", 10, 1, 28))
    program, _ = serving_program([model], [0.5], [0.25])
    seen = []
    pool = program.members[0].get_submodule("features.3")  # the max-pool after the stem
    pool.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        got = program(images)
        expected = EnsembleProgram([model], [0.5], [0.25])(images)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen[0].is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


class _Residual(nn.Module):
    """An in-place ReLU whose input a residual sum also reads, then a pool; and a ReLU
    before a pool that is the only reader (the one that may move)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.pool(self.act(y)) + nn.functional.max_pool2d(y, 2)  # y read twice: stays
        return nn.functional.max_pool2d(torch.relu(self.head(z)), 3, 1, 1)  # moves


def test_a_relu_before_a_max_pool_moves_after_it_only_where_nothing_else_reads() -> None:
    from ft_dist.export.program import relu_after_pool

    torch.manual_seed(0)
    model = _Residual().eval()
    images = torch.randn(4, 3, 8, 8)
    expected = model(images.clone())
    moved = relu_after_pool(torch.fx.symbolic_trace(model))
    order = [n.target for n in moved.graph.nodes if n.op != "placeholder"]
    # The residual branch keeps ReLU -> pool; the head's ReLU now follows its pool.
    assert order.index("act") < order.index("pool")
    pool = next(n for n in moved.graph.nodes if n.target is nn.functional.max_pool2d
                and n.args[1] == 3)  # fmt: skip
    assert [user.target for user in pool.users] == [torch.relu]
    assert torch.equal(moved(images.clone()), expected)


def test_the_serving_small_cnn_pools_before_its_relus_with_the_same_logits(monkeypatch) -> None:
    import copy

    from ft_dist.export import program as program_module
    from ft_dist.models import build_model

    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, 28).eval()
    images = torch.rand(16, 1, 28, 28)
    served, _ = serving_program([copy.deepcopy(model)], [0.5], [0.25])
    with monkeypatch.context() as patch:  # the same serving program without the move
        patch.setattr(program_module, "relu_after_pool", lambda member: member)
        unmoved, _ = serving_program([copy.deepcopy(model)], [0.5], [0.25])
    member = served.members[0]
    kinds = [type(member.get_submodule(n.target)).__name__ for n in member.graph.nodes
             if n.op == "call_module"]  # fmt: skip
    assert kinds[:6] == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU"]
    with torch.no_grad():
        assert torch.equal(served(images), unmoved(images))
