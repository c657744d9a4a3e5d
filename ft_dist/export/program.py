"""The averaged-softmax ensemble as a `torch.export` program that needs only PyTorch.

    program = torch.export.load("ensemble.pt2").module()
    probs = program(images)   # images: float32 [N, C, H, W] in [0, 1]; probs: [N, K]

The program normalises with the training mean/std itself and returns the mean of the
members' softmax probabilities (SPEC §7), exactly what `ft-dist evaluate` scores. The
graph holds only ATen operators and dense (masked) weights, so loading it imports nothing
from ft_dist; the batch dimension is dynamic.

`serving_program` is the serving form `ft-dist bench infer` times (the dense baseline
included): each BatchNorm that directly follows a conv or linear layer is folded into that
layer's weight and bias, a ReLU right before a max-pool runs after it (they commute), and
weights and activations are channels_last. Both compute the
same function up to float rounding and speed up a dense model as much as the members on CPU
(oneDNN), so the ensemble is compared against a dense model served as well as it is.

`ensemble_program` is what `ft-dist export` ships: by default the members of the serving
form *packed* into one network whose layers run all of them at once (export/packed.py:
grouped convolutions, batched matmuls; `PackedEnsembleProgram`), checked against the
separate members' probabilities on a random batch; the separate members (``form=
"separate"``, or with a warning when packing fails or does not match) otherwise. Both take
the same images and return the same probabilities.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ft_dist.private_api import batch_norm_base
from ft_dist.utils import Note

MAX_BATCH = 65536
PROGRAM_FORMS = ("packed", "separate")
# Largest difference of a probability between the packed and the separate members that
# float rounding explains (the packed layers sum in another order).
PACKED_TOLERANCE = 1e-5


class _Normalising(nn.Module):
    """The programs' first step: the training mean/std (buffers), then channels_last."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        inputs = (images - self.mean) / self.std
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs


class EnsembleProgram(_Normalising):
    """Normalise, run every member, average their softmax probabilities."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
    ) -> None:
        super().__init__(mean, std, channels_last)
        if not members:
            raise ValueError("an ensemble program needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self.normalise(images)
        probs = [member(inputs).float().softmax(dim=1) for member in self.members]
        return torch.stack(probs).mean(dim=0)


class PackedEnsembleProgram(_Normalising):
    """Normalise, run the packed members (logits side by side, [N, M*K]), average their
    softmax probabilities: the function of `EnsembleProgram` in one network."""

    def __init__(
        self,
        network: nn.Module,
        members: int,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
    ) -> None:
        super().__init__(mean, std, channels_last)
        self.network, self.num_members = network, members

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self.normalise(images)
        logits = self.network(inputs).float()
        probs = logits.view(logits.shape[0], self.num_members, -1).softmax(dim=2)
        return probs.mean(dim=1)


def fold_norms(member: nn.Module) -> tuple[nn.Module, int]:
    """(``member`` with every BatchNorm that directly follows a conv/linear layer folded into
    it, how many were folded), in eval mode. A model torch.fx cannot trace symbolically
    (data-dependent control flow) comes back unchanged with 0."""
    from torch.fx.experimental.optimization import fuse

    def norms(module: nn.Module) -> int:
        return sum(isinstance(m, batch_norm_base()) for m in module.modules())

    try:
        folded = fuse(member.eval())
    except Exception:  # noqa: BLE001 - any tracing failure: serve the member as it is
        return member.eval(), 0
    return folded.eval(), norms(member) - norms(folded)


def channels_last_outputs(member: nn.Module) -> nn.Module:
    """``member`` (a torch.fx GraphModule; anything else as it is) with the output of every
    2-d convolution over a single input channel made channels_last. Such a
    convolution (the stem over grey-scale images) cannot tell channels_last from contiguous
    in its input and weight, so oneDNN returns a contiguous output and every layer after it
    runs in the slower contiguous layout (the max-pool and the next convolution)."""
    if not isinstance(member, torch.fx.GraphModule):
        return member
    graph, changed = member.graph, False
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        layer = member.get_submodule(node.target)
        if not isinstance(layer, nn.Conv2d) or layer.in_channels != 1:
            continue
        with graph.inserting_after(node):
            layout = graph.call_method(
                "contiguous", (node,), {"memory_format": torch.channels_last}
            )
        node.replace_all_uses_with(layout, delete_user_cb=lambda user, new=layout: user is not new)
        changed = True
    if changed:
        member.recompile()
    return member


def _is_relu(member: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return type(member.get_submodule(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in (torch.relu, torch.relu_, nn.functional.relu) and len(node.args) == 1
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_max_pool(member: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        layer = member.get_submodule(node.target)
        return isinstance(layer, nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d) and not (
            layer.return_indices
        )
    pools = (nn.functional.max_pool1d, nn.functional.max_pool2d, nn.functional.max_pool3d)
    if node.op != "call_function" or node.target not in pools:
        return False
    indices = node.args[6] if len(node.args) > 6 else node.kwargs.get("return_indices", False)
    return not indices


def relu_after_pool(member: nn.Module) -> nn.Module:
    """``member`` (a torch.fx GraphModule; anything else as it is) with every ReLU whose only
    user is a max-pool moved after the pool. ReLU is monotonic and the pool pads with -inf,
    so max and ReLU commute: the same values, with the ReLU over a quarter of them after a
    2x2 pool (on small CNNs a full pass over the largest activations). Only where the ReLU
    is its input's only user, so an in-place ReLU changed nothing anyone else read."""
    if not isinstance(member, torch.fx.GraphModule):
        return member
    changed = False
    for relu in list(member.graph.nodes):
        if not _is_relu(member, relu) or len(relu.users) != 1:
            continue
        pool, source = next(iter(relu.users)), relu.args[0]
        if not isinstance(source, torch.fx.Node) or len(source.users) != 1:
            continue
        if not _is_max_pool(member, pool) or pool.args[0] is not relu:
            continue
        pool.replace_all_uses_with(relu)
        pool.args = (source, *pool.args[1:])
        relu.args = (pool, *relu.args[1:])
        pool.append(relu)  # the ReLU now runs after the pool
        changed = True
    if changed:
        member.graph.lint()
        member.recompile()
    return member


def serving_program(
    members: Sequence[nn.Module], mean: Sequence[float], std: Sequence[float]
) -> tuple[EnsembleProgram, list[int]]:
    """(The ensemble program with norms folded, each ReLU before a max-pool moved after it,
    channels_last weights and activations, the number of norms folded per member)."""
    folded = [fold_norms(member) for member in members]
    served = [relu_after_pool(channels_last_outputs(member)) for member, _ in folded]
    program = EnsembleProgram(served, mean, std, channels_last=True)
    return program.to(memory_format=torch.channels_last).eval(), [n for _, n in folded]


def packed_program(separate: EnsembleProgram, input_shape: Sequence[int]) -> PackedEnsembleProgram:
    """The members of ``separate`` (a `serving_program`) packed into one network,
    channels_last like it; raises `ft_dist.export.packed.PackError`."""
    from ft_dist.export.packed import pack_members

    example = torch.zeros(1, *input_shape)
    network = pack_members(list(separate.members), example)
    program = PackedEnsembleProgram(
        network, len(separate.members), separate.mean.flatten().tolist(),
        separate.std.flatten().tolist(), channels_last=True,
    )  # fmt: skip
    return program.to(memory_format=torch.channels_last).eval()


def packed_difference(
    packed: nn.Module, separate: nn.Module, input_shape: Sequence[int], batch: int = 8
) -> float:
    """Largest absolute difference of their probabilities on a seeded random batch."""
    images = torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((packed(images) - separate(images)).abs().max())


def ensemble_program(
    members: Sequence[nn.Module],
    mean: Sequence[float],
    std: Sequence[float],
    input_shape: Sequence[int],
    form: str = "packed",
) -> tuple[nn.Module, dict[str, Any]]:
    """(The program `ft-dist export` ships, what it is): ``form`` "packed" (the default)
    packs the serving members into one network and keeps it when it gives the separate
    members' probabilities within `PACKED_TOLERANCE`; otherwise, with a warning, and for
    ``form`` "separate" or a single member, the separate members' `serving_program`."""
    if form not in PROGRAM_FORMS:
        raise ValueError(f"program form {form!r}: expected one of {PROGRAM_FORMS}")
    separate, folded = serving_program(members, mean, std)
    details: dict[str, Any] = {"form": "separate", "folded_norms": folded}
    if form == "separate" or len(members) == 1:  # one member: nothing to pack
        return separate, details
    from ft_dist.export.packed import PackError

    try:
        packed = packed_program(separate, input_shape)
        difference = packed_difference(packed, separate, input_shape)
        if not difference <= PACKED_TOLERANCE:
            raise PackError(
                f"its probabilities differ from the separate members' by {difference:.2g} "
                f"(> {PACKED_TOLERANCE:g})"
            )
    except PackError as error:
        warnings.warn(
            f"ensemble.pt2 runs the {len(members)} members one after another (not packed into "
            f"one network): {error}",
            Note,
            stacklevel=2,
        )
        details["packing_failed"] = str(error)
        return separate, details
    details.update(form="packed", max_abs_difference=difference, **packing_facts(packed, separate))
    return packed, details


def packing_facts(packed: PackedEnsembleProgram, separate: EnsembleProgram) -> dict[str, Any]:
    """Numbers of the packed network against the members' own (what padding the members to
    common widths added: 0 when they have the same widths)."""
    numbers = sum(t.numel() for t in packed.network.state_dict().values())
    members = sum(t.numel() for t in separate.members.state_dict().values())
    return {"packed_parameters": numbers, "padding_fraction": numbers / members - 1.0}


def trace_program(program: nn.Module, input_shape: Sequence[int]) -> torch.export.ExportedProgram:
    """``program`` (eval mode, CPU) through torch.export with a dynamic batch."""
    program = program.eval().cpu()
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(program, (example,), dynamic_shapes={"images": {0: batch}})


def export_program(
    program: nn.Module, input_shape: tuple[int, int, int], path: Path
) -> torch.export.ExportedProgram:
    """Trace ``program`` (`trace_program`) and save it to ``path``."""
    exported = trace_program(program, input_shape)
    with warnings.catch_warnings():  # torch's note on channels_last weights: they save intact
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(exported, str(path))
    return exported
