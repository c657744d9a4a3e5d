"""Which channels of a model can be removed together: its dependency structure.

A *channel group* is a set of weight slices that must go together for the network to stay
well formed: the output filter of a conv, the BatchNorm that follows it, the input columns
of every layer that reads it, and, across a residual sum or a concatenation, every conv that
adds into (or is concatenated into) the same channel. The groups come from torch-pruning's
`DependencyGraph` (traced from autograd, so it knows residual sums, concatenations,
flattening and the norms after a conv/linear in torchvision, timm and users' models), never
from per-architecture code. Attention heads of timm-style attention blocks (a `qkv` Linear,
a `proj` Linear, `num_heads`, `head_dim`) are a group whose unit is one head: the head's
q, k and v rows of `qkv` and its columns of `proj`.

A group is *removable* only when zeroing its channels' slices gives exactly the network
with those channels cut out, which holds for per-channel operations (conv/linear, BatchNorm,
InstanceNorm, element-wise activations with f(0) = 0, pooling, sums, concatenation). It is
*fixed* (reported with the reason) when it holds the model's outputs (the classes), a
LayerNorm or GroupNorm (their statistics run over the channels, so a zeroed channel would
still count), a grouped convolution, a bare parameter (positional embeddings, class
tokens: they live in a LayerNorm'd residual stream anyway), nn.MultiheadAttention (its
heads cannot be resized), or any other parametrised module the slimming does not know.

Every slice maps positions along one dimension of one parameter to the group's channel
(``index[i]`` belongs to ``channel[i]``): a flatten after the last conv maps one channel to
H·W input features of the Linear, a concatenation shifts channels by an offset, a head maps
to 3·head_dim rows of qkv.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ft_dist.private_api import batch_norm_base, conv_base, instance_norm_base
from ft_dist.sparse.allocation import strip_wrapper_prefixes
from ft_dist.utils import error_summary

PER_CHANNEL_NORMS = (batch_norm_base(), instance_norm_base())
CONVOLUTIONS = conv_base()  # Conv1d/2d/3d and ConvTranspose1d/2d/3d
CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class ChannelSlice:
    """Positions ``index`` along ``dim`` of parameter ``name``; ``channel[i]`` is the group
    channel position ``index[i]`` belongs to. ``producer``: an output slice of a conv or
    linear weight (what the channel score reads)."""

    name: str
    dim: int
    index: torch.Tensor
    channel: torch.Tensor
    producer: bool


@dataclass(frozen=True)
class ChannelGroup:
    """Channels (or attention heads) removable together. ``name``: the root module (the
    first conv/linear whose outputs the group prunes), ``.heads`` appended for heads."""

    name: str
    root: str
    kind: str  # "channels" or "heads"
    size: int
    slices: tuple[ChannelSlice, ...]

    def parameter_names(self) -> list[str]:
        return sorted({s.name for s in self.slices})


@dataclass(frozen=True)
class Structure:
    """The removable groups of a model (in a deterministic order) and the fixed ones."""

    groups: tuple[ChannelGroup, ...]
    fixed: tuple[tuple[str, str], ...]  # (root module, why it is not removable)

    @property
    def num_channels(self) -> int:
        return sum(group.size for group in self.groups)

    def group(self, name: str) -> ChannelGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"no removable channel group {name!r}")


class ChannelTraceError(ValueError):
    """torch-pruning could not trace the model's channel dependencies (e.g. a channel
    shuffle): no channel of it can be cut."""


class _Unsupported(Exception):
    """A group item that makes the group fixed (the message says why)."""


def _example_modes(model: nn.Module):
    return {module: module.training for module in model.modules()}


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The leaf modules whose forward returned the model's output tensor itself (the
    classifier): its output channels are the classes and never removed."""
    produced: list[tuple[torch.Tensor, nn.Module]] = []  # kept alive: ids stay unique

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            produced.append((output, module))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
    outputs = output if isinstance(output, (tuple, list)) else [output]
    return [m for t, m in produced if any(t is out for out in outputs)]


def attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """timm-style attention modules whose heads can be removed: a ``qkv`` Linear producing
    q, k and v for ``num_heads`` heads of ``head_dim``, a ``proj`` Linear reading them, and
    nothing else that mixes heads (no scale norm over all heads, no gate, no separate
    q/v biases)."""
    blocks = {}
    for name, module in model.named_modules():
        qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
        heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
            continue
        if not (isinstance(heads, int) and isinstance(head_dim, int)):
            continue
        width = heads * head_dim
        norm = getattr(module, "norm", None)
        mixes = (
            getattr(module, "gate", None) is not None
            or not (norm is None or isinstance(norm, nn.Identity))
            or any(hasattr(module, attr) for attr in ("q_bias", "v_bias", "k_bias"))
        )
        if qkv.out_features == 3 * width and proj.in_features == width and not mixes:
            blocks[strip_wrapper_prefixes(name)] = module
    return blocks


def _head_group(name: str, block: nn.Module) -> ChannelGroup:
    heads, head_dim = block.num_heads, block.head_dim
    width = heads * head_dim
    head_of = torch.arange(width) // head_dim  # column j of proj belongs to head j // head_dim
    rows = torch.arange(3 * width)
    slices = [
        ChannelSlice(f"{name}.qkv.weight", 0, rows, head_of.repeat(3), producer=True),
        ChannelSlice(f"{name}.proj.weight", 1, torch.arange(width), head_of, producer=False),
    ]
    if block.qkv.bias is not None:
        slices.append(ChannelSlice(f"{name}.qkv.bias", 0, rows, head_of.repeat(3), False))
    return ChannelGroup(f"{name}.heads", f"{name}.qkv", "heads", heads, tuple(slices))


def _item_slices(
    module: nn.Module, name: str, out: bool, idxs: torch.Tensor, roots: torch.Tensor
) -> list[ChannelSlice]:
    """The parameter slices one torch-pruning group item stands for."""

    def make(param: str, dim: int, producer: bool = False) -> ChannelSlice:
        return ChannelSlice(f"{name}.{param}" if name else param, dim, idxs, roots, producer)

    if isinstance(module, CONVOLUTIONS):
        depthwise = module.groups == module.in_channels == module.out_channels
        if module.groups != 1 and not depthwise:
            raise _Unsupported(f"grouped convolution {name} (groups={module.groups})")
        if module.transposed and module.groups != 1:
            raise _Unsupported(f"grouped transposed convolution {name}")
        if depthwise:  # one filter per channel: in and out channels go together
            slices = [make("weight", 0)]
        elif module.transposed:
            slices = [make("weight", 1, producer=out)] if out else [make("weight", 0)]
        else:
            slices = [make("weight", 0, producer=True)] if out else [make("weight", 1)]
        if module.bias is not None and (out or depthwise):
            slices.append(make("bias", 0))
        return slices
    if isinstance(module, nn.Linear):
        if not out:
            return [make("weight", 1)]
        slices = [make("weight", 0, producer=True)]
        return slices + ([make("bias", 0)] if module.bias is not None else [])
    if isinstance(module, PER_CHANNEL_NORMS):
        return [make("weight", 0), make("bias", 0)] if module.affine else []
    if isinstance(module, nn.PReLU):
        return [make("weight", 0)] if module.num_parameters > 1 else []
    if isinstance(module, CROSS_CHANNEL_NORMS):
        raise _Unsupported(f"{type(module).__name__} {name} normalises across the channels")
    if isinstance(module, nn.MultiheadAttention):
        raise _Unsupported(f"nn.MultiheadAttention {name} (its width cannot be resized)")
    if list(module.parameters(recurse=False)):
        raise _Unsupported(f"{type(module).__name__} {name} (unknown to the channel slimming)")
    return []


def _group_slices(group, names: dict[nn.Module, str], dg) -> list[ChannelSlice]:
    slices: list[ChannelSlice] = []
    for item in group.items:
        target = item.dep.target.module
        if isinstance(target, nn.Parameter):
            raise _Unsupported("a bare parameter (positional embedding, class token, scale)")
        if target not in names:  # torch-pruning's own placeholders: sums, reshapes, concats
            continue
        idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
        roots = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
        out = dg.is_out_channel_pruning_fn(item.dep.handler)
        slices += _item_slices(target, names[target], out, idxs, roots)
    return slices


def _merge(slices: list[ChannelSlice]) -> tuple[ChannelSlice, ...]:
    """One slice per (parameter, dim): torch-pruning may list a layer twice."""
    merged: dict[tuple[str, int], ChannelSlice] = {}
    for piece in slices:
        key = (piece.name, piece.dim)
        if key in merged:
            old = merged[key]
            pairs = torch.stack(
                [torch.cat([old.index, piece.index]), torch.cat([old.channel, piece.channel])], 1
            )
            pairs = torch.unique(pairs, dim=0)
            piece = ChannelSlice(piece.name, piece.dim, pairs[:, 0], pairs[:, 1], old.producer)
        merged[key] = piece
    return tuple(merged[key] for key in sorted(merged))


def channel_structure(model: nn.Module, example: torch.Tensor) -> Structure:
    """The removable channel groups of ``model`` (traced once with ``example``, a batch of
    one input) and the groups that stay fixed. Runs in eval mode (no BatchNorm statistics
    move) with autograd on (torch-pruning traces grad_fn); the modules' modes are restored.
    Deterministic: every rank of a run gets the same groups in the same order."""
    return trace_structure(model, example)[0]


def trace_structure(model: nn.Module, example: torch.Tensor):
    """(`Structure`, the torch-pruning DependencyGraph it came from) of ``model``."""
    import torch_pruning as tp

    modes = _example_modes(model)
    try:
        model.eval()
        outputs = output_layers(model, example)
        blocks = attention_blocks(model)
        ignored = outputs + [block.qkv for block in blocks.values()]
        with torch.enable_grad():
            try:
                dg = tp.DependencyGraph().build_dependency(model, example, verbose=False)
            except Exception as error:  # torch-pruning's own failure, whatever its type
                raise ChannelTraceError(
                    "its channel dependencies cannot be traced (torch-pruning: "
                    f"{error_summary(error)})"
                ) from error
        names = {m: strip_wrapper_prefixes(n) for n, m in model.named_modules()}
        groups, fixed = [], []
        for group in dg.get_all_groups(ignored_layers=ignored):
            root_module = group.items[0].dep.target.module
            root = names.get(root_module, type(root_module).__name__)
            try:
                slices = _merge(_group_slices(group, names, dg))
            except _Unsupported as reason:
                fixed.append((root, str(reason)))
                continue
            size = len(group.items[0].idxs)
            if slices and any(s.producer for s in slices):
                groups.append(ChannelGroup(root, root, "channels", size, slices))
        groups += [_head_group(name, block) for name, block in blocks.items()]
        fixed += [(names[m], "the model's outputs (classes)") for m in outputs if m in names]
    finally:
        for module, training in modes.items():
            module.training = training
    return Structure(tuple(groups), tuple(fixed)), dg
