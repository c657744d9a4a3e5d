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

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from ft_dist.private_api import COMPILED_PARAMETER_PREFIX
from ft_dist.sparse.choices import SPARSE_INITS
from ft_dist.utils import table_entry

MASKED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Bare matmul weights of modules that do not call a Linear's forward (attention in_proj).
MASKED_ATTRIBUTES = {
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
}
# Wrappers that prefix parameter names: DDP (`module.`) and torch.compile.
WRAPPER_PREFIXES = ("module.", COMPILED_PARAMETER_PREFIX)


def strip_wrapper_prefixes(name: str) -> str:
    """`module.conv1.weight` -> `conv1.weight` (any WRAPPER_PREFIXES, nested too), so names
    match with or without DDP and torch.compile."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def default_sparse_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The default rule: every weight that multiplies activations. Conv*d and Linear weights
    (subclasses included) and the bare projection weights of nn.MultiheadAttention; never
    biases, norms, embeddings (nn.Embedding, positional embeddings, class tokens) or any
    other bare parameter, which `sparsity.include` can add by name."""
    params: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, MASKED_MODULES) and module.weight is not None:
            params[strip_wrapper_prefixes(f"{prefix}weight")] = module.weight
        for kind, attributes in MASKED_ATTRIBUTES.items():
            if isinstance(module, kind):
                for attribute in attributes:
                    param = getattr(module, attribute, None)
                    if isinstance(param, nn.Parameter):
                        params[strip_wrapper_prefixes(f"{prefix}{attribute}")] = param
    return params


def _matching(patterns: Iterable[str], names: Iterable[str], key: str, choices) -> set[str]:
    """Names matched by fnmatch patterns; a pattern that matches nothing is an error (a typo
    would silently change which weights are sparse)."""
    names = list(names)
    matched: set[str] = set()
    for pattern in patterns:
        hits = {name for name in names if fnmatch.fnmatchcase(name, pattern)}
        if not hits:
            raise ValueError(
                f"{key}: pattern {pattern!r} matches no parameter; choose from: {sorted(choices)}"
            )
        matched |= hits
    return matched


def maskable_parameters(
    model: nn.Module,
    dense_layers: Iterable[str] = (),
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> dict[str, nn.Parameter]:
    """The weights DST makes sparse, by wrapper-free parameter name, in model order.

    The default rule (`default_sparse_weights`), plus parameters matched by the ``include``
    globs (at least 2-D: a matrix or kernel), minus those matched by ``exclude`` and the
    exact names in ``dense_layers`` (with or without the ``.weight`` suffix).
    """
    everything = {strip_wrapper_prefixes(n): p for n, p in model.named_parameters()}
    params = default_sparse_weights(model)
    added = _matching(include, everything, "sparsity.include", everything)
    flat = sorted(name for name in added if everything[name].dim() < 2)
    if flat:
        raise ValueError(
            f"sparsity.include matches {flat}, which are 1-D (biases, norms, scales); only "
            "matrices and kernels can be sparsified: narrow the pattern"
        )
    params.update({name: everything[name] for name in added})
    keep_dense = {name if name.endswith(".weight") else f"{name}.weight" for name in dense_layers}
    keep_dense = {strip_wrapper_prefixes(name) for name in keep_dense}
    unknown = sorted(keep_dense - params.keys())
    if unknown:
        raise ValueError(
            f"sparsity.dense_layers names {unknown}, which are not sparse weights of the "
            f"model; choose from: {sorted(params)}"
        )
    keep_dense |= _matching(exclude, params, "sparsity.exclude", params)
    return {
        name: param
        for name, param in everything.items()
        if name in params and name not in keep_dense
    }


def layer_densities(
    shapes: Mapping[str, Sequence[int]], density: float, method: str = "erk"
) -> dict[str, float]:
    """Per-layer densities whose size-weighted mean is ``density`` (see module docstring)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"sparsity.density must be in (0, 1], got {density}")
    raw_density = table_entry(SPARSE_INITS, method, "sparsity.sparse_init").raw_density
    if raw_density is None or density == 1.0:
        return {name: density for name in shapes}

    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: raw_density(shape) for name, shape in shapes.items()}
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
        counts[name] = min(numel, max(1, _rounded(densities[name], numel)))
    return counts


def starved_layers(
    shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float]
) -> list[str]:
    """The layers whose density rounds to no active weight: `active_counts` holds them at
    its floor of one (preflight refuses such a density)."""
    return [n for n, shape in shapes.items() if _rounded(densities[n], math.prod(shape)) < 1]


def _rounded(density: float, numel: int) -> int:
    return round(density * numel)
