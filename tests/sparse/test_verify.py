"""Channel groups are verified by a trial cut (sparse/verify.py) before channel-level DST or
the slim export relies on them: a group whose cut fails or changes the output is kept whole
with a warning, refused when the config names it, and a model whose channels cannot be
traced is refused before any worker starts; the export falls back to the masked network."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from ft_dist.ensemble.tickets import Ticket
from ft_dist.export.slim import slim_ticket
from ft_dist.models import ModelConfig, build_model
from ft_dist.preflight import check_model_builds
from ft_dist.sparse import DynamicSparsity, SparsityConfig
from ft_dist.sparse.structure import ChannelTraceError, channel_structure
from ft_dist.sparse.verify import cut_problem, trial_channels, verify_structure, zero_channels_

BUILDER = Path(__file__).resolve().parent / "channel_ops_builder.py"
CHANNELS = {"density": 0.5, "channel_sparsity": 0.5, "channel_end_step": 4}


def _model(name: str, size: int = 16, channels: int = 3) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name, 10, channels, size)
    return model, torch.zeros(1, channels, size, size)


def _excluded(name: str, size: int = 16) -> dict[str, str]:
    model, example = _model(name, size)
    _, excluded = verify_structure(model, channel_structure(model, example), example)
    return dict(excluded)


def test_exact_cuts_verify_and_leave_the_model_as_it_was() -> None:
    for name, size, channels in (("small-cnn", 28, 1), ("resnet18", 32, 3), ("wrn-16-4", 32, 3)):
        model, example = _model(name, size, channels)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        structure = channel_structure(model, example)
        verified, excluded = verify_structure(model, structure, example)
        assert excluded == () and verified == structure, name
        assert torch.equal(torch.get_rng_state(), rng)  # a generator of its own
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_softmax_over_channels_is_seen_and_kept_whole() -> None:
    excluded = _excluded(f"{BUILDER}:softmax")
    assert list(excluded) == ["conv2"]
    assert "changes the output" in excluded["conv2"]


def test_a_split_into_fixed_sizes_is_seen_and_kept_whole() -> None:
    excluded = _excluded(f"{BUILDER}:fixed_split")
    assert set(excluded) == {"small", "large"}
    assert all("cutting it fails" in why for why in excluded.values())


def test_a_spatial_gate_over_the_channels_is_never_removable() -> None:
    model, example = _model(f"{BUILDER}:spatial_gate")
    verified, _ = verify_structure(model, channel_structure(model, example), example)
    assert "conv1" not in {g.name for g in verified.groups}  # the gate reads its mean
    for group in verified.groups:
        for channels in trial_channels(group):
            assert cut_problem(model, verified, {group.name: channels}, example) is None


def test_channel_dst_keeps_an_unverified_group_whole_with_a_warning() -> None:
    model, example = _model(f"{BUILDER}:softmax")
    sparsity = DynamicSparsity(model, None, SparsityConfig(**CHANNELS))
    with pytest.warns(UserWarning, match="channel group conv2 is kept whole"):
        model(torch.zeros(2, *example.shape[1:]))
    assert "conv2" not in {g.name for g in sparsity.channels.structure.groups}
    assert "conv2" in dict(sparsity.channels.structure.fixed)


def test_a_named_group_that_cannot_be_cut_is_refused_naming_the_fix() -> None:
    model, example = _model(f"{BUILDER}:softmax")
    config = SparsityConfig(
        **CHANNELS, channel_allocation="uniform", channel_group_sparsity={"conv2": 0.75}
    )
    DynamicSparsity(model, None, config)
    with pytest.raises(ValueError, match="conv2 names channel group conv2, which cannot be cut"):
        model(torch.zeros(2, *example.shape[1:]))


def test_a_model_whose_channels_cannot_be_traced_is_refused_before_the_workers() -> None:
    model, example = _model("torchvision:shufflenet_v2_x0_5", 64)
    with pytest.raises(ChannelTraceError, match="ZeroDivisionError"):
        channel_structure(model, example)
    cfg = ModelConfig(
        name="torchvision:shufflenet_v2_x0_5", num_classes=10, in_channels=3, image_size=64
    )
    with pytest.raises(ValueError) as refused:
        check_model_builds(cfg, SparsityConfig(**CHANNELS))
    message = str(refused.value)
    assert "channels cannot be cut" in message and "channel_sparsity=0" in message
    assert "\n" not in message
    check_model_builds(cfg, SparsityConfig(density=0.5))  # unstructured DST is fine


def _ticket(name: str, size: int, dead: str | None = None, channels: int = 3) -> Ticket:
    """A DST ticket of ``name``; channel 1 of group ``dead`` dead (all its slices zero and
    inactive), as channel-level DST leaves a removed channel."""
    model, example = _model(name, size, channels)
    masks = DynamicSparsity(model, None, SparsityConfig(density=0.5, seed=0)).masks
    if dead is not None:
        structure = channel_structure(model, example)
        zero_channels_(model, structure, {dead: [1]})
        for piece in structure.group(dead).slices:
            if piece.name in masks:
                positions = piece.index[piece.channel == 1]
                masks[piece.name].index_fill_(piece.dim, positions, False)
    meta = {"model": name, "num_classes": 10, "in_channels": channels, "image_size": size}
    return Ticket(Path(f"{name.rsplit(':', 1)[-1]}.pt"), model.state_dict(), masks, meta)


@pytest.mark.parametrize(
    ("name", "size", "dead", "why"),
    [
        ("torchvision:shufflenet_v2_x0_5", 64, None, "cannot be traced"),
        (f"{BUILDER}:softmax", 16, "conv2", "changes the output"),
    ],
    ids=["shufflenet", "channel-softmax"],
)
def test_export_keeps_the_channels_of_a_ticket_it_cannot_cut(
    name: str, size: int, dead: str | None, why: str
) -> None:
    ticket = _ticket(name, size, dead)
    with pytest.warns(UserWarning, match=f"exported with its channels kept.*{why}"):
        state, masks, record = slim_ticket(ticket)
    assert record is None and masks is ticket.masks
    assert state.keys() == ticket.model_state.keys()


def test_export_cuts_a_ticket_it_can_cut_without_a_warning() -> None:
    ticket = _ticket("small-cnn", 28, "features.0", channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, record = slim_ticket(ticket)
    assert record is not None and record["removed"] == {"features.0": [1]}


@pytest.mark.heavy  # a minute or two: each of its 31 groups tried alone
def test_ghostnet_groups_that_the_cut_gets_wrong_are_kept_whole() -> None:
    # torch-pruning cuts the stem of ghostnet_050 twice (two paths of its trace): cutting one
    # channel of that group leaves 6 of 8, not 7 (its export failed after training).
    excluded = _excluded("timm:ghostnet_050", 32)
    assert "blocks.1.0.shortcut.0" in excluded
    assert "slimming left conv_stem.weight at (6, 3, 3, 3)" in excluded["blocks.1.0.shortcut.0"]


@pytest.mark.heavy
def test_mixnet_split_groups_are_kept_whole() -> None:
    excluded = _excluded("timm:mixnet_s", 32)
    assert excluded and all("split" in why for why in excluded.values())
