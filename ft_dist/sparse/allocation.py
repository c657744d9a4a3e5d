"""Which weights are masked, and how many of each layer's weights are active.

Per-layer densities (SPEC §3):

* ``uniform``: every masked layer gets the global density ``d``.
* ``er`` (Erdős–Rényi): ``density_l ∝ (n_in + n_out) / (n_in · n_out)``.
* ``erk`` (Erdős–Rényi–Kernel): ``density_l ∝ sum(shape_l) / prod(shape_l)``; for a conv
  ``(c_out + c_in + k_h + k_w) / (c_out · c_in · k_h · k_w)``.

For ER/ERK write ``density_l = ε · raw_l``. With ``D`` the set of layers forced dense and
``n_l`` the layer sizes, the budget ``Σ_l density_l · n_l = d · Σ_l n_l`` gives::

    ε = (d · Σ_l n_l − Σ_{l∈D} n_l) / Σ_{l∉D} raw_l · n_l

If ``ε · raw_l > 1`` the layer cannot hold that many weights: it joins ``D`` and ε is solved
again. Moving a layer into ``D`` only raises ε (its ``n_l`` < ``ε · raw_l · n_l``), so every
layer over the limit can move at once and the loop ends after at most one pass per layer.

Counts are exact: each layer gets ``round(density_l · numel)`` active weights, so the global
density matches ``d`` to within one weight per layer (the published code samples Bernoulli
masks, which is only right in expectation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

MASKED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Wrappers that prefix parameter names: DDP (`module.`) and torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ALLOCATION_METHODS = ("erk", "er", "uniform")


def strip_wrapper_prefixes(name: str) -> str:
    """`module._orig_mod.conv1.weight` -> `conv1.weight`, so names match with or without DDP."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def maskable_parameters(
    model: nn.Module, dense_layers: Iterable[str] = ()
) -> dict[str, nn.Parameter]:
    """The weights of every Conv*d and Linear module, by wrapper-free parameter name.

    Biases and normalisation parameters are never masked. ``dense_layers`` lists parameter
    names (with or without the ``.weight`` suffix) to keep dense; a name that matches nothing
    is an error, since a typo would silently sparsify a layer meant to stay dense.
    """
    params: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, MASKED_MODULES) and module.weight is not None:
            params[strip_wrapper_prefixes(f"{module_name}.weight")] = module.weight
    keep_dense = {name if name.endswith(".weight") else f"{name}.weight" for name in dense_layers}
    keep_dense = {strip_wrapper_prefixes(name) for name in keep_dense}
    unknown = sorted(keep_dense - params.keys())
    if unknown:
        raise ValueError(
            f"sparsity.dense_layers names {unknown}, which are not Conv/Linear weights of the "
            f"model; choose from: {sorted(params)}"
        )
    return {name: p for name, p in params.items() if name not in keep_dense}


def _raw_density(shape: Sequence[int], method: str) -> float:
    if method == "erk":
        return sum(shape) / math.prod(shape)
    # ER uses only the fan-in and fan-out (output and input channels), not the kernel size.
    n_out, n_in = shape[0], shape[1] if len(shape) > 1 else 1
    return (n_in + n_out) / (n_in * n_out)


def layer_densities(
    shapes: Mapping[str, Sequence[int]], density: float, method: str = "erk"
) -> dict[str, float]:
    """Per-layer densities whose size-weighted mean is ``density`` (see module docstring)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"sparsity.density must be in (0, 1], got {density}")
    if method not in ALLOCATION_METHODS:
        raise ValueError(
            f"sparsity.sparse_init must be one of {ALLOCATION_METHODS}, got {method!r}"
        )
    if method == "uniform" or density == 1.0:
        return {name: density for name in shapes}

    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: _raw_density(shape, method) for name, shape in shapes.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        sparse = [name for name in shapes if name not in dense]
        if not sparse:
            break
        dense_size = sum(sizes[name] for name in dense)
        epsilon = (budget - dense_size) / sum(raw[name] * sizes[name] for name in sparse)
        too_dense = {name for name in sparse if epsilon * raw[name] > 1.0}
        if not too_dense:
            break
        dense |= too_dense
    return {name: 1.0 if name in dense else epsilon * raw[name] for name in shapes}


def active_counts(
    shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float]
) -> dict[str, int]:
    """Exact number of active weights per layer: round(density · numel), at least one."""
    counts = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        counts[name] = min(numel, max(1, round(densities[name] * numel)))
    return counts
