"""FLOPs accounting for sparse training (SPEC §8, the RigL convention).

Forward FLOPs come from PyTorch's own counter (`torch.utils.flop_counter.FlopCounterMode`),
run once on a single example. Each masked Conv/Linear module is bracketed by forward hooks
that read the counter's running total, so a layer's FLOPs are exactly what the counter saw
while that module ran (at its real output resolution, grouped convs and all), with no
hand-written formula. Run the model on the meta device to count a ResNet-50 in well under
a second with no memory: ``with torch.device("meta"): model = build_model(...)``.

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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ft_dist.sparse.allocation import (
    layer_densities,
    maskable_parameters,
    strip_wrapper_prefixes,
)
from ft_dist.sparse.scores import growth_criterion

ENSEMBLE_METHODS = ("single", "edst", "pdst")


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


def _layer_modules(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """Module owning each weight name (wrapper prefixes like `module.` ignored)."""
    wanted = set(names)
    modules = {}
    for module_name, module in model.named_modules():
        name = strip_wrapper_prefixes(f"{module_name}.weight")
        if name in wanted and getattr(module, "weight", None) is not None:
            modules[name] = module
    missing = sorted(wanted - modules.keys())
    if missing:
        raise ValueError(f"layers {missing} are not weights of a module of the model")
    return modules


def _count_forward(
    model: nn.Module, input_shape: Sequence[int], names: Iterable[str]
) -> tuple[int, dict[str, int]]:
    """Total forward FLOPs of one example and the share of each named layer's module."""
    modules = _layer_modules(model, names)
    per_layer = dict.fromkeys(modules, 0)
    counter = FlopCounterMode(display=False)
    starts: dict[str, int] = {}
    handles = []
    for name, module in modules.items():

        def before(_module, _inputs, name=name):
            starts[name] = counter.get_total_flops()

        def after(_module, _inputs, _output, name=name):
            per_layer[name] += counter.get_total_flops() - starts[name]

        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    param = next(model.parameters())
    example = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()  # batch statistics of one example would be degenerate; FLOPs are the same
        with torch.no_grad(), counter:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return counter.get_total_flops(), per_layer


def layer_flops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Dense forward FLOPs of one example (shape C, H, W) per Conv/Linear weight name."""
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
) -> FlopsReport:
    """FLOPs of `model` under the per-layer densities DynamicSparsity would allocate.

    Build the model on the meta device first to price it without allocating weights.
    """
    params = maskable_parameters(model, dense_layers)
    shapes = {name: tuple(param.shape) for name, param in params.items()}
    return flops_report(model, input_shape, layer_densities(shapes, density, sparse_init))


def forward_flops(
    model: nn.Module, input_shape: Sequence[int], layer_densities: Mapping[str, float]
) -> tuple[int, float]:
    """(f_D, f_S): dense and sparse forward FLOPs of one example of shape (C, H, W)."""
    report = flops_report(model, input_shape, layer_densities)
    return report.dense_forward_flops, report.sparse_forward_flops


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


def run_epochs(
    method: Literal["single", "edst", "pdst"],
    *,
    epochs: int | None = None,
    num_members: int = 1,
    exploration_epochs: int = 0,
    refinement_epochs: int = 0,
) -> tuple[int, int]:
    """(epochs per member, epochs counted in total) for an ensemble method (SPEC §5, §6).

    EDST is one run of t_ex + M · t_re epochs that yields M members, so it is counted once.
    """
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"ensemble.method must be one of {ENSEMBLE_METHODS}, got {method!r}")
    if num_members < 1:
        raise ValueError(f"ensemble.num_members must be >= 1, got {num_members}")
    if method == "edst":
        if refinement_epochs < 1 or exploration_epochs < 0:
            raise ValueError(
                "ensemble.edst needs exploration_epochs >= 0 and refinement_epochs >= 1, got "
                f"{exploration_epochs} and {refinement_epochs}"
            )
        total = exploration_epochs + num_members * refinement_epochs
        return total, total
    if epochs is None or epochs < 1:
        raise ValueError(f"train.epochs must be >= 1 for method {method!r}, got {epochs}")
    members = num_members if method == "pdst" else 1
    return epochs, epochs * members


def price_run(
    dense_fwd: float,
    sparse_fwd: float,
    *,
    method: Literal["single", "edst", "pdst"] = "single",
    epochs: int | None = None,
    num_members: int = 1,
    exploration_epochs: int = 0,
    refinement_epochs: int = 0,
    dynamic: bool = True,
    growth: str = "gradient",
    update_every_steps: float | None = None,
    reference_epochs: int | None = None,
) -> RunCost:
    """Price a run from its config values (SPEC §8), relative to one dense run.

    The values map one to one onto a run config: ensemble.method / num_members /
    edst.exploration_epochs / edst.refinement_epochs, train.epochs, sparsity.update
    (`dynamic`), sparsity.growth and ΔT in optimizer steps (convert update_every_samples by
    dividing by the global batch). A dense run is `sparse_fwd == dense_fwd, dynamic=False`.
    `reference_epochs` defaults to one member's schedule: `epochs`, or for EDST
    t_ex + t_re (150 + 100 = 250 in the paper's CIFAR setting, its dense baseline).
    """
    per_member, total = run_epochs(
        method,
        epochs=epochs,
        num_members=num_members,
        exploration_epochs=exploration_epochs,
        refinement_epochs=refinement_epochs,
    )
    if reference_epochs is None:
        reference_epochs = exploration_epochs + refinement_epochs if method == "edst" else epochs
    if reference_epochs is None or reference_epochs < 1:
        raise ValueError(f"reference_epochs must be >= 1, got {reference_epochs}")
    step = training_flops_per_example(dense_fwd, sparse_fwd, growth, update_every_steps, dynamic)
    members = 1 if method == "single" else num_members
    train = step * total
    return RunCost(
        method=method,
        num_members=members,
        epochs_per_member=per_member,
        total_epochs=total,
        step_flops=step,
        train_flops_per_example=train,
        train_relative=train / (3.0 * dense_fwd * reference_epochs),
        inference_flops=members * sparse_fwd,
        inference_relative=members * sparse_fwd / dense_fwd,
        reference_epochs=reference_epochs,
    )


def price_standard_runs(
    dense_fwd: float,
    sparse_fwd: float,
    *,
    epochs: int = 250,
    num_members: int = 3,
    exploration_epochs: int = 150,
    refinement_epochs: int = 100,
    growth: str = "gradient",
    update_every_steps: float = 1000,
) -> dict[str, RunCost]:
    """The paper's comparison: dense, static, DST, EDST and DST Ensemble vs one dense run.

    Defaults are the published CIFAR WRN-28-10 setting (SPEC §5, §6). Every row is relative
    to one dense run of `epochs` epochs.
    """
    sparse = {"growth": growth, "update_every_steps": update_every_steps}
    return {
        "dense": price_run(dense_fwd, dense_fwd, epochs=epochs, dynamic=False),
        "static": price_run(dense_fwd, sparse_fwd, epochs=epochs, dynamic=False),
        "dst": price_run(dense_fwd, sparse_fwd, epochs=epochs, **sparse),
        "edst": price_run(
            dense_fwd,
            sparse_fwd,
            method="edst",
            num_members=num_members,
            exploration_epochs=exploration_epochs,
            refinement_epochs=refinement_epochs,
            reference_epochs=epochs,
            **sparse,
        ),
        "pdst": price_run(
            dense_fwd, sparse_fwd, method="pdst", epochs=epochs, num_members=num_members, **sparse
        ),
    }
