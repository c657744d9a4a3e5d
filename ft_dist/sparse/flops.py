"""FLOPs accounting for sparse training (SPEC §8, the RigL convention).

Forward FLOPs come from PyTorch's own counter (`torch.utils.flop_counter.FlopCounterMode`),
run once on a tiny batch. Every ATen op that costs FLOPs is attributed to the sparse
weights it reads (`_WeightFlops`), so a layer's FLOPs are exactly what the counter saw for
the matmuls and convolutions of that weight (at its real output resolution, grouped convs,
attention projections and bare ``x @ W`` weights included), with no hand-written formula
and whatever module runs it. Run the model on the meta device to count a ResNet-50 in well
under a second with no memory: ``with torch.device("meta"): model = build_model(...)``.

Training cost per example-step, with f_D the dense and f_S = Σ_l d_l · F_l the sparse
forward FLOPs (backward ≈ 2 × forward: gradients w.r.t. activations and w.r.t. weights):

* dense: 3 f_D
* static, or dynamic with `random` growth (SET): 3 f_S
* a growth criterion that reads the dense gradient at updates (`needs_gradient`, e.g.
  `gradient`, RigL): one step in ΔT+1 also needs the dense weight gradient,
  (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)
* one that keeps an EMA of the dense gradient (`ema_of`, e.g. `momentum`, `fisher`): the
  dense gradient is needed every step, 2 f_S + f_D

The cost class of a criterion is read from its entry in `sparse/scores.py` GROWTH_SCORES;
drop criteria score active weights only, whose gradients the sparse backward computes
anyway, so they add nothing.

Run cost = per-step cost × examples seen (epochs × dataset size, summed over members).
Under channel-level DST each stretch between two removals is priced at its own f_S and slim
f_D, and the per-step cost is their step-weighted mean (`mean_training_flops_per_example`).

This module is the one place the arithmetic lives: training (`ft_dist.train.setup`), the
tickets and summary.json, `ft-dist flops` (through `ft_dist.train.methods.pricing`) and the
evaluation report all price with the functions below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ft_dist.private_api import TorchDispatchMode
from ft_dist.sparse.allocation import (
    layer_densities,
    maskable_parameters,
    strip_wrapper_prefixes,
)
from ft_dist.sparse.scores import growth_criterion

if TYPE_CHECKING:
    from ft_dist.models.config import ModelConfig


@dataclass(frozen=True)
class LayerFlops:
    """One masked layer: its weight shape, density and forward FLOPs for one example."""

    name: str
    shape: tuple[int, ...]
    density: float
    dense_flops: int
    sparse_flops: float


@dataclass(frozen=True)
class FlopsReport:
    """Forward FLOPs of one example: per masked layer and for the whole model.

    `dense_forward_flops` is the whole model (unmasked matmuls included, at density 1);
    `sparse_forward_flops` replaces each masked layer's F_l by d_l · F_l.
    """

    layers: tuple[LayerFlops, ...]
    dense_forward_flops: int
    sparse_forward_flops: float

    @property
    def forward_flops_ratio(self) -> float:
        return self.sparse_forward_flops / self.dense_forward_flops

    def to_dict(self) -> dict:
        return {
            "dense_forward_flops": self.dense_forward_flops,
            "sparse_forward_flops": self.sparse_forward_flops,
            "forward_flops_ratio": self.forward_flops_ratio,
            "layers": [asdict(layer) | {"shape": list(layer.shape)} for layer in self.layers],
        }


class _WeightFlops(TorchDispatchMode):
    """Attributes the FLOPs of each ATen op to the named parameters it reads.

    Runs inside a `FlopCounterMode` (the counter sits below this mode on the dispatch stack,
    so the counter's running total moves exactly by the op's FLOPs). Tensors derived from a
    weight by ops that cost no FLOPs (transposes, views, chunks of a packed `in_proj_weight`,
    casts, masking) carry the weight's name on, so ``x @ W.t()``, `F.linear`, convolutions
    and `nn.MultiheadAttention`'s packed projections are all found, whatever module runs
    them. Works on the meta device.
    """

    def __init__(self, counter: FlopCounterMode, params: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.counter = counter
        self.origin = {id(param): name for name, param in params.items()}
        self.alive: list[torch.Tensor] = []  # derived tensors, kept so their ids stay unique
        self.flops = dict.fromkeys(params, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        before = self.counter.get_total_flops()
        out = func(*args, **kwargs)
        spent = self.counter.get_total_flops() - before
        names = {self.origin[id(t)] for t in _tensors((args, kwargs)) if id(t) in self.origin}
        if spent and names:
            for name in names:  # an op reading two weights (rare) splits its FLOPs
                self.flops[name] += spent // len(names)
        elif not spent and len(names) == 1:
            (name,) = names
            for tensor in _tensors(out):
                self.origin[id(tensor)] = name
                self.alive.append(tensor)
        return out


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _count_forward(
    model: nn.Module, input_shape: Sequence[int], names: Iterable[str]
) -> tuple[int, dict[str, int]]:
    """Total forward FLOPs of one example and the share of each named parameter."""
    params = {strip_wrapper_prefixes(n): p for n, p in model.named_parameters()}
    wanted = list(names)
    missing = sorted(set(wanted) - params.keys())
    if missing:
        raise ValueError(f"layers {missing} are not parameters of the model")
    counter = FlopCounterMode(display=False)
    tracker = _WeightFlops(counter, {name: params[name] for name in wanted})
    param = next(model.parameters())
    # Batch 2: some layers (BatchNorm1d in training mode) refuse one example; halved below.
    example = torch.zeros(2, *input_shape, device=param.device, dtype=param.dtype)
    modes = {module: module.training for module in model.modules()}
    try:
        # eval(): batch statistics would be degenerate; FLOPs are the same. Autograd stays on
        # so that nn.MultiheadAttention takes its ordinary path, not the fused inference one.
        model.eval()
        with counter, tracker:
            model(example)
    finally:
        for module, training in modes.items():
            module.training = training
    per_layer = {name: flops // 2 for name, flops in tracker.flops.items()}
    return counter.get_total_flops() // 2, per_layer


def layer_flops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Dense forward FLOPs of one example (shape C, H, W) per sparse weight of the default rule."""
    return _count_forward(model, input_shape, maskable_parameters(model))[1]


def flops_report(
    model: nn.Module, input_shape: Sequence[int], layer_densities: Mapping[str, float]
) -> FlopsReport:
    """Per-layer and total forward FLOPs; layers absent from `layer_densities` count dense."""
    total, per_layer = _count_forward(model, input_shape, layer_densities)
    shapes = {
        strip_wrapper_prefixes(name): tuple(param.shape) for name, param in model.named_parameters()
    }
    layers = tuple(
        LayerFlops(name, shapes[name], float(density), per_layer[name], density * per_layer[name])
        for name, density in layer_densities.items()
    )
    saved = sum(layer.dense_flops - layer.sparse_flops for layer in layers)
    return FlopsReport(layers, total, total - saved)


def allocated_flops_report(
    model: nn.Module,
    input_shape: Sequence[int],
    density: float,
    sparse_init: str = "erk",
    dense_layers: Iterable[str] = (),
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> FlopsReport:
    """FLOPs of `model` under the per-layer densities DynamicSparsity would allocate.

    Build the model on the meta device first to price it without allocating weights.
    """
    params = maskable_parameters(model, dense_layers, include, exclude)
    shapes = {name: tuple(param.shape) for name, param in params.items()}
    return flops_report(model, input_shape, layer_densities(shapes, density, sparse_init))


def forward_flops(
    model: nn.Module, input_shape: Sequence[int], layer_densities: Mapping[str, float]
) -> tuple[int, float]:
    """(f_D, f_S): dense and sparse forward FLOPs of one example of shape (C, H, W)."""
    report = flops_report(model, input_shape, layer_densities)
    return report.dense_forward_flops, report.sparse_forward_flops


def model_forward_flops(
    model: ModelConfig, layer_densities: Mapping[str, float]
) -> tuple[int, float]:
    """(f_D, f_S) of the network a resolved `model:` section builds (shape C, H, W from it),
    counted on a copy built on the meta device: no weights are allocated."""
    from ft_dist.models import build_model_from_config

    with torch.device("meta"):
        network = build_model_from_config(model)
    shape = (model.in_channels, model.image_size, model.image_size)
    return forward_flops(network, shape, layer_densities)


def training_flops_per_example(
    dense_fwd: float,
    sparse_fwd: float,
    growth: str = "gradient",
    update_every_steps: float | None = None,
    dynamic: bool = True,
) -> float:
    """Training FLOPs of one example-step (forward + backward), see the module docstring."""
    criterion = growth_criterion(growth)
    if not dynamic or not (criterion.needs_gradient or criterion.needs_every_step_gradient):
        return 3.0 * sparse_fwd
    if criterion.needs_every_step_gradient:
        return 2.0 * sparse_fwd + dense_fwd
    if update_every_steps is None or update_every_steps <= 0:
        raise ValueError("gradient growth needs update_every_steps (ΔT) > 0 to be priced")
    delta_t = float(update_every_steps)
    return (3.0 * sparse_fwd * delta_t + 2.0 * sparse_fwd + dense_fwd) / (delta_t + 1.0)


def mean_over_steps(values: Iterable[tuple[int, float]]) -> float | None:
    """Σ n·v / Σ n over (steps n, value v) stretches; None when no step has run."""
    values = list(values)
    steps = sum(n for n, _ in values)
    if steps <= 0:
        return None
    return sum(n * value for n, value in values) / steps


def mean_training_flops_per_example(
    segments: Iterable[tuple[int, float, float]],
    growth: str = "gradient",
    update_every_steps: float | None = None,
    dynamic: bool = True,
) -> float | None:
    """Training FLOPs of one example-step averaged over stretches of steps, each priced at
    its own forward FLOPs: ``segments`` holds (steps, f_S, f_D) per stretch (channel-level
    DST: f_D is the slim network's dense forward FLOPs, so a removed channel costs nothing
    in the dense gradient either). None when no step has run."""
    return mean_over_steps(
        (steps, training_flops_per_example(dense, sparse, growth, update_every_steps, dynamic))
        for steps, sparse, dense in segments
    )


@dataclass(frozen=True)
class RunCost:
    """Cost of a whole run, per example of the training set, and relative to a dense run.

    `train_flops_per_example` sums every epoch of every member; multiply by the dataset
    size for the run total. `reference_epochs` is the length of the dense run it is
    compared with (`train_relative` = this run / that dense run).
    """

    method: str
    num_members: int
    epochs_per_member: int
    total_epochs: int
    step_flops: float
    train_flops_per_example: float
    train_relative: float
    inference_flops: float
    inference_relative: float
    reference_epochs: int

    def to_dict(self) -> dict:
        return asdict(self)


def price_run(
    dense_fwd: float,
    sparse_fwd: float,
    *,
    method: str = "single",
    epochs_per_run: int,
    total_epochs: int,
    members: int = 1,
    reference_epochs: int | None = None,
    dynamic: bool = True,
    growth: str = "gradient",
    update_every_steps: float | None = None,
) -> RunCost:
    """Price a run (SPEC §8) relative to one dense run of ``reference_epochs`` epochs
    (default: ``epochs_per_run``). The epoch counts come from the ensemble method's table
    entry (`ft_dist.train.methods.pricing.price_method`, which every caller should use);
    ``method`` only labels the result. A dense run is ``sparse_fwd == dense_fwd,
    dynamic=False``."""
    reference_epochs = reference_epochs or epochs_per_run
    if min(epochs_per_run, total_epochs, members, reference_epochs) < 1:
        raise ValueError(
            f"epochs and members must be >= 1, got epochs_per_run={epochs_per_run}, "
            f"total_epochs={total_epochs}, members={members}, reference={reference_epochs}"
        )
    step = training_flops_per_example(dense_fwd, sparse_fwd, growth, update_every_steps, dynamic)
    train = step * total_epochs
    return RunCost(
        method=method,
        num_members=members,
        epochs_per_member=epochs_per_run,
        total_epochs=total_epochs,
        step_flops=step,
        train_flops_per_example=train,
        train_relative=train / (3.0 * dense_fwd * reference_epochs),
        inference_flops=members * sparse_fwd,
        inference_relative=members * sparse_fwd / dense_fwd,
        reference_epochs=reference_epochs,
    )
