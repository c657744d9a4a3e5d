"""The packed ensemble program (export/packed.py): members of different widths in one
network whose layers run all of them at once, equal to the separate members; a model it
cannot pack, or a packing that does not match, falls back to the separate members."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from ft_dist.export import EnsembleProgram, PackError, ensemble_program, pack_members
from ft_dist.export.program import fold_norms, trace_program
from ft_dist.models import build_model
from ft_dist.private_api import batch_norm_base
from ft_dist.sparse.slim import slim_model
from ft_dist.sparse.structure import channel_structure
from ft_dist.utils import Note

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def _trained_looking(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and a classifier large enough that the members'
    probabilities differ visibly, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, batch_norm_base()):
                module.running_mean.copy_(
                    torch.rand(module.num_features, generator=generator) - 0.5
                )
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(0.4 * torch.rand(module.num_features, generator=generator) - 0.2)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.5, generator=generator)
    return model.eval()


def slim_members(builder, shape: tuple, fractions: list[float]) -> list[nn.Module]:
    """One member per fraction: that share of every channel group cut out at random, so
    the members have different widths (and different channels)."""
    members = []
    for seed, fraction in enumerate(fractions):
        torch.manual_seed(seed)
        model = _trained_looking(builder(), seed)
        example = torch.zeros(1, *shape)
        structure = channel_structure(model, example)
        rng = random.Random(seed)
        removed = {
            group.name: sorted(rng.sample(range(group.size), int(fraction * group.size)))
            for group in structure.groups
            if group.kind == "channels" and int(fraction * group.size)
        }
        members.append(slim_model(model, {}, example, removed=removed).model.eval())
    return members


def _mobilenet() -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v3_small(num_classes=10)


ARCHITECTURES = {
    # residual sums, downsampling shortcuts, a stem that sees the image
    "resnet18": (lambda: build_model("resnet18", 10, 3, 32), (3, 16, 16)),
    # depthwise convolutions, squeeze-excitation gates, hardswish, dropout
    "torchvision-mobilenet_v3_small": (_mobilenet, (3, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_packed_program_equals_the_separate_members(name: str) -> None:
    builder, shape = ARCHITECTURES[name]
    members = slim_members(builder, shape, [0.25, 0.5, 0.4])
    widths = {tuple(p.shape for p in m.parameters()) for m in members}
    assert len(widths) == 3  # three different widths
    program, details = ensemble_program(members, MEAN, STD, shape)
    assert details["form"] == "packed" and details["max_abs_difference"] <= 1e-5
    convs = [m for m in program.modules() if isinstance(m, nn.Conv2d)]
    assert any(conv.groups >= 3 for conv in convs)  # grouped over the members
    assert not any(isinstance(m, nn.Linear) and m.out_features == 10 for m in program.modules())
    expected_program = EnsembleProgram(members, MEAN, STD)  # unfolded, one after another
    exported = trace_program(program, shape).module()
    for batch in (1, 5):  # the batch stays dynamic
        images = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = expected_program(images)
            got = exported(images)
        assert got.shape == expected.shape == (batch, 10)
        assert float((got - expected).abs().max()) <= 1e-5
        assert float(expected.max()) > 0.2  # the probabilities are not all uniform


class ConvNet(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, hidden, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden * 4 * 4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


def test_padded_channels_are_zero_after_batchnorm_folding() -> None:
    members = [_trained_looking(ConvNet(3, 4), 0), _trained_looking(ConvNet(5, 2), 1)]
    folded = [fold_norms(m)[0] for m in members]
    packed = pack_members(folded, torch.zeros(1, 3, 8, 8))
    conv, conv2 = packed.conv, packed.conv2
    assert conv.weight.shape == (10, 3, 3, 3) and conv.groups == 1  # 2 members x width 5
    assert conv2.weight.shape == (8, 5, 3, 3) and conv2.groups == 2  # 2 x 4, 5 in per member
    # Member 0's two padded channels: zero filters and zero (folded) bias.
    assert not conv.weight[3:5].any() and not conv.bias[3:5].any()
    # Member 1's padded hidden channels, and every filter over a padded input channel.
    assert not conv2.weight[6:8].any() and not conv2.bias[6:8].any()
    assert not conv2.weight[:4, 3:].any()
    images = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        logits = packed(images).view(4, 2, 7)
        for index, member in enumerate(members):
            torch.testing.assert_close(logits[:, index], member(images), rtol=1e-5, atol=1e-5)


class ChannelSoftmax(nn.Module):
    """A softmax over the channels: padded and packed channels would take part."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).softmax(dim=1).mean(dim=(2, 3)))


def test_a_model_that_cannot_be_packed_ships_the_separate_members() -> None:
    members = [_trained_looking(ChannelSoftmax(), seed) for seed in range(2)]
    with pytest.raises(PackError, match="softmax"):
        pack_members([fold_norms(m)[0] for m in members], torch.zeros(1, 3, 8, 8))
    with pytest.warns(Note, match="one after another .*softmax"):
        program, details = ensemble_program(members, MEAN, STD, (3, 8, 8))
    assert details["form"] == "separate" and "softmax" in details["packing_failed"]
    assert isinstance(program, EnsembleProgram)
    images = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            program(images), EnsembleProgram(members, MEAN, STD)(images), rtol=1e-5, atol=1e-6
        )


def test_a_packed_program_that_does_not_match_is_not_shipped(monkeypatch) -> None:
    import ft_dist.export.program as program_module

    members = [_trained_looking(ConvNet(3, 4), 0), _trained_looking(ConvNet(5, 2), 1)]
    monkeypatch.setattr(program_module, "packed_difference", lambda *args: 0.5)
    with pytest.warns(Note, match="differ from the separate members' by 0.5"):
        program, details = ensemble_program(members, MEAN, STD, (3, 8, 8))
    assert details["form"] == "separate" and isinstance(program, EnsembleProgram)


def test_separate_form_on_request_packs_nothing() -> None:
    members = [_trained_looking(ConvNet(3, 4), 0)]
    program, details = ensemble_program(members, MEAN, STD, (3, 8, 8), form="separate")
    assert details == {"form": "separate", "folded_norms": [2]}
    with pytest.raises(ValueError, match="program form"):
        ensemble_program(members, MEAN, STD, (3, 8, 8), form="fast")


def test_a_packed_program_torch_export_cannot_trace_falls_back(monkeypatch, tmp_path) -> None:
    import ft_dist.export.run as run_module
    from ft_dist.export import PackedEnsembleProgram

    real_export = run_module.export_program
    traced = []

    def export_program(program, shape, path):
        traced.append(type(program).__name__)
        if isinstance(program, PackedEnsembleProgram):
            raise RuntimeError("unsupported operator")
        return real_export(program, shape, path)

    monkeypatch.setattr(run_module, "export_program", export_program)
    members = [_trained_looking(ConvNet(3, 4), 0), _trained_looking(ConvNet(5, 2), 1)]
    facts = {"mean": MEAN, "std": STD}
    with pytest.warns(Note, match="torch.export failed on the packed network"):
        details = run_module.write_program(
            members, facts, (3, 8, 8), tmp_path / "ensemble.pt2", "packed"
        )
    assert traced == ["PackedEnsembleProgram", "EnsembleProgram"]
    assert details["form"] == "separate" and "unsupported operator" in details["packing_failed"]
    program = torch.export.load(str(tmp_path / "ensemble.pt2")).module()
    images = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = EnsembleProgram(members, MEAN, STD)(images)
        assert float((program(images) - expected).abs().max()) <= 1e-5
