"""M members packed into one network whose layers run all of them at once (Packed-Ensembles).

The members' activations live side by side in the channel dimension, member-major: an
activation of shape [N, C, ...] of each member becomes one [N, M*C, ...] tensor. Then

* a convolution is one grouped convolution (groups x M) with the members' filters stacked
  (the first one, which sees the shared image, is a plain convolution with M*O outputs);
* a Linear layer is one batched matmul over the member dimension (`torch.baddbmm`);
* an unfolded BatchNorm holds the members' statistics side by side;
* everything else the members do per channel or per position (activations, pooling,
  residual sums, flatten, spatial means) runs unchanged on the packed tensor.

Members of a channel-level ensemble are slim with different widths. Each member's tensors
are zero-padded at the end of every dimension to the largest width of any member: a padded
channel gets zero filters, zero bias and zero BatchNorm scale and shift (so it is exactly
zero after BatchNorm folding too), and the next layer's filters over it are zero, so it
contributes nothing. Padding costs work only where widths differ (EDST's tickets, which
share their channels, need none).

It is generic but not universal: the members are traced with torch.fx (the graph the
BatchNorm folding already traced) and every operation must be one this module knows to act
per channel; anything else (a LayerNorm or softmax over channels, a concatenation, a
reshape of the channels, attention) raises `PackError`, and `ft-dist export` then ships the
separate members. The packed program is also checked against the separate members'
probabilities on a random batch before it is used (export/run.py).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.nn import functional as F

SHARED, PACKED, SCALAR = "shared", "packed", "scalar"


class PackError(ValueError):
    """The members cannot be packed into one network (the message says why)."""


class PackedLinear(nn.Module):
    """M Linear layers over a packed [N, M*I] input: one batched matmul, output [N, M*O]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.members, self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.transpose(1, 2).contiguous())  # [M, I, O]
        self.register_buffer("bias", bias.unsqueeze(1).contiguous())  # [M, 1, O]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = x.reshape(n, self.members, self.in_features).transpose(0, 1)
        y = torch.baddbmm(self.bias, x, self.weight)  # [M, N, O]
        return y.transpose(0, 1).reshape(n, self.members * self.out_features)


# Parameter-free layers that act per channel (or per position): unchanged on packed inputs.
PER_CHANNEL_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Functions and methods that act elementwise or per channel.
ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
    operator.neg, torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid,
    torch.tanh, torch.clamp, F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid,
    F.sigmoid, F.leaky_relu, F.elu, F.mish, F.hardtanh, F.dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}  # fmt: skip
ELEMENTWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "relu", "relu_", "sigmoid",
    "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_min_", "contiguous",
    "float", "neg",
}  # fmt: skip
REDUCTIONS = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}


def _pad(tensor: torch.Tensor, shape: Sequence[int], fill: float = 0.0) -> torch.Tensor:
    """``tensor`` at the top-left corner of a ``shape`` tensor filled with ``fill``."""
    out = torch.full(tuple(shape), fill, dtype=tensor.dtype)
    out[tuple(slice(0, size) for size in tensor.shape)] = tensor.detach().cpu()
    return out


def _padded(tensors: Sequence[torch.Tensor], fill: float = 0.0) -> list[torch.Tensor]:
    """The members' tensors, each padded to the largest size of every dimension."""
    if len({t.dim() for t in tensors}) != 1:
        raise PackError("members hold tensors of different ranks")
    shape = [max(sizes) for sizes in zip(*(t.shape for t in tensors), strict=True)]
    return [_pad(t, shape, fill) for t in tensors]


def _same(modules: Sequence[nn.Module], *attributes: str) -> None:
    for name in attributes:
        values = {repr(getattr(m, name)) for m in modules}
        if len(values) > 1:
            raise PackError(f"members differ in {type(modules[0]).__name__}.{name}: {values}")


def _packed_conv(convs: Sequence[nn.Module], shared_input: bool) -> nn.Module:
    _same(convs, "kernel_size", "stride", "padding", "dilation", "padding_mode")
    if len({m.bias is None for m in convs}) > 1:
        raise PackError("members differ in whether a convolution has a bias")
    members = len(convs)
    weights = _padded([m.weight for m in convs])
    out_channels, group_width = weights[0].shape[:2]
    depthwise = all(m.groups == m.in_channels > 1 for m in convs)
    if depthwise:  # one group per channel: the padded width
        if len({m.out_channels // m.groups for m in convs}) > 1:
            raise PackError("members differ in a depthwise convolution's channel multiplier")
        groups = max(m.in_channels for m in convs)
    elif all(m.groups == 1 for m in convs):
        groups = 1
    elif len({tuple(m.weight.shape) for m in convs}) == 1 and len({m.groups for m in convs}) == 1:
        groups = convs[0].groups
    else:  # grouped convolutions of different widths: padding breaks their groups
        raise PackError("members' grouped convolutions differ in width")
    in_channels = groups * group_width
    if shared_input:
        if groups != 1:
            raise PackError("a grouped convolution reads the image itself")
        in_channels, groups = convs[0].in_channels, 1
        if any(m.in_channels != in_channels for m in convs):
            raise PackError("members read different numbers of input channels")
    else:
        in_channels, groups = members * in_channels, members * groups
    packed = type(convs[0])(
        in_channels, members * out_channels, convs[0].kernel_size, stride=convs[0].stride,
        padding=convs[0].padding, dilation=convs[0].dilation, groups=groups,
        bias=convs[0].bias is not None, padding_mode=convs[0].padding_mode,
    )  # fmt: skip
    with torch.no_grad():
        packed.weight.copy_(torch.cat(weights))
        if packed.bias is not None:
            packed.bias.copy_(torch.cat(_padded([m.bias for m in convs])))
    return packed


def _packed_linear(linears: Sequence[nn.Module], shared_input: bool) -> nn.Module:
    weights = _padded([m.weight for m in linears])
    biases = [
        m.bias if m.bias is not None else torch.zeros(m.out_features, dtype=m.weight.dtype)
        for m in linears
    ]
    biases = _padded(biases)
    if not shared_input:
        return PackedLinear(torch.stack(weights), torch.stack(biases))
    if len({m.in_features for m in linears}) > 1:
        raise PackError("members read different numbers of input features")
    packed = nn.Linear(linears[0].in_features, len(linears) * weights[0].shape[0])
    with torch.no_grad():
        packed.weight.copy_(torch.cat(weights))
        packed.bias.copy_(torch.cat(biases))
    return packed


def _packed_norm(norms: Sequence[nn.Module]) -> nn.Module:
    _same(norms, "eps", "affine", "track_running_stats")
    if not norms[0].track_running_stats:
        raise PackError("a BatchNorm without running statistics")
    width = max(m.num_features for m in norms)
    packed = type(norms[0])(len(norms) * width, eps=norms[0].eps, affine=norms[0].affine)
    with torch.no_grad():
        packed.running_mean.copy_(torch.cat(_padded([m.running_mean for m in norms])))
        packed.running_var.copy_(torch.cat(_padded([m.running_var for m in norms], fill=1.0)))
        if norms[0].affine:  # a padded channel: scale 0, shift 0, exactly zero out
            packed.weight.copy_(torch.cat(_padded([m.weight for m in norms])))
            packed.bias.copy_(torch.cat(_padded([m.bias for m in norms])))
    return packed.eval()


def _signature(graph: fx.Graph) -> list[tuple]:
    return [(n.op, str(n.target), repr(n.args), repr(n.kwargs)) for n in graph.nodes]


def _tensors(values) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(values, found.append)
    return found


class _Packer:
    """Walk the template graph; replace layers with packed ones; refuse what is unknown."""

    def __init__(self, members: Sequence[fx.GraphModule], example: torch.Tensor) -> None:
        from torch.fx.passes.shape_prop import ShapeProp

        self.members = members
        self.packed = copy.deepcopy(members[0])
        ShapeProp(self.packed).propagate(example)  # ranks of every activation
        self.state: dict[fx.Node, str] = {}

    def rank(self, node: fx.Node) -> int | None:
        meta = node.meta.get("tensor_meta")
        return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def operands(self, node: fx.Node) -> set[str]:
        return {self.state[arg] for arg in _tensors((node.args, node.kwargs))} - {SCALAR}

    def elementwise(self, node: fx.Node) -> str:
        kinds = self.operands(node)
        if kinds == {SHARED, PACKED}:
            raise PackError(f"{node.name} combines the shared input with a member's activation")
        return kinds.pop() if kinds else SCALAR

    def run(self) -> fx.GraphModule:
        for node in self.packed.graph.nodes:
            self.state[node] = self.visit(node)
        (output,) = [n for n in self.packed.graph.nodes if n.op == "output"]
        result = output.args[0]
        if not isinstance(result, fx.Node) or self.state[result] != PACKED:
            raise PackError("the members' output is not one tensor of logits")
        if self.rank(result) != 2:
            raise PackError("the members' output is not [N, classes]")
        self.packed.recompile()
        return self.packed

    def visit(self, node: fx.Node) -> str:
        if node.op == "placeholder":
            return SHARED
        if node.op == "output":
            return PACKED
        if node.op == "get_attr":
            values = [_attr(m, node.target) for m in self.members]
            if all(isinstance(v, torch.Tensor) for v in values) and all(
                v.shape == values[0].shape and torch.equal(values[0], v) for v in values[1:]
            ):
                return SHARED
            raise PackError(f"{node.target} is used as a tensor, not through a layer")
        if node.op == "call_module":
            return self.module(node)
        if node.op == "call_function":
            return self.function(node, node.target)
        if node.op == "call_method":
            return self.function(node, node.target)
        raise PackError(f"unknown graph node {node.op}")

    def module(self, node: fx.Node) -> str:
        layers = [m.get_submodule(node.target) for m in self.members]
        layer = layers[0]
        kinds = self.operands(node)
        if kinds != {SHARED} and kinds != {PACKED} or len(node.args) != 1 or node.kwargs:
            raise PackError(f"{node.target} does not take one activation")
        shared = kinds == {SHARED}
        if isinstance(layer, CONVS) and all(type(m) is type(layer) for m in layers):
            self.packed.add_submodule(node.target, _packed_conv(layers, shared))
            return PACKED
        if isinstance(layer, nn.Linear) and all(type(m) is nn.Linear for m in layers):
            if self.rank(node.args[0]) != 2:
                raise PackError(f"{node.target}: a Linear layer over more than [N, features]")
            self.packed.add_submodule(node.target, _packed_linear(layers, shared))
            return PACKED
        if isinstance(layer, NORMS) and not shared:
            self.packed.add_submodule(node.target, _packed_norm(layers))
            return PACKED
        per_channel = isinstance(layer, PER_CHANNEL_MODULES)
        if isinstance(layer, nn.Flatten):
            rank = self.rank(node.args[0])
            per_channel = rank is not None and layer.start_dim % rank >= 1
        if per_channel:
            return SHARED if shared else PACKED
        raise PackError(f"{node.target}: {type(layer).__name__} has no packed form")

    def function(self, node: fx.Node, target) -> str:
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        if target in ELEMENTWISE_FUNCTIONS or target in ELEMENTWISE_METHODS:
            return self.elementwise(node)
        if _is_eval_stochastic_depth(node, name):  # torchvision's, in eval mode: identity
            return self.elementwise(node)
        if target in (torch.flatten, "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            rank = self.rank(node.args[0])
            if isinstance(start, int) and rank and start % rank >= 1:
                return self.elementwise(node)
        elif target in REDUCTIONS:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            rank = self.rank(node.args[0])
            dims = (dims,) if isinstance(dims, int) else dims
            if (
                rank
                and isinstance(dims, tuple | list)
                and dims
                and all(isinstance(d, int) and d % rank >= 2 for d in dims)
            ):
                return self.elementwise(node)
        elif target in ("view", "reshape"):  # x.view(x.size(0), -1): a flatten
            shape = node.args[1:]
            if len(shape) == 2 and shape[1] == -1 and self.batch_size(shape[0]):
                return self.elementwise(node)
        elif target == "size" and node.args[1:] in ((0,), ()) and not node.kwargs:
            return SCALAR if node.args[1:] == (0,) else self._refuse(node, name)
        return self._refuse(node, name)

    def batch_size(self, value) -> bool:
        return isinstance(value, fx.Node) and value.target == "size" and value.args[1:] == (0,)

    def _refuse(self, node: fx.Node, name: str) -> str:
        raise PackError(f"{node.name} ({name}) is not known to act per channel")


def _is_eval_stochastic_depth(node: fx.Node, name: str) -> bool:
    if name != "stochastic_depth" or not str(getattr(node.target, "__module__", "")).startswith(
        "torchvision.ops"
    ):
        return False
    training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
    return training is False


def _attr(module: nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def pack_members(members: Sequence[nn.Module], example: torch.Tensor) -> fx.GraphModule:
    """One network over [N, C, H, W] images whose output is the members' logits side by
    side, [N, M*K] (member-major). ``members`` are eval-mode torch.fx GraphModules of one
    architecture (widths may differ), e.g. `fold_norms`' results. Raises `PackError`."""
    if not members:
        raise PackError("no members")
    if not all(isinstance(m, fx.GraphModule) for m in members):
        raise PackError("a member cannot be traced by torch.fx")
    signatures = [_signature(m.graph) for m in members]
    if any(s != signatures[0] for s in signatures[1:]):
        raise PackError("members' graphs differ")
    with torch.no_grad():
        return _Packer(members, example).run().eval()
