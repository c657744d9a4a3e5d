"""The named choices of the `sparsity:` section as tables: ``sparse_init`` and ``compat``.

Each table's keys are the only list of a key's choices: the config validates against them
(sparse/config.py) and the engine looks its behaviour up by them. Names and plain facts
only, no torch, so that loading a config imports none; the torch code lives apart
(allocation.py: the ER/ERK densities; official.py: the official code's update).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ft_dist.utils import table_entry


@dataclass(frozen=True)
class SparseInit:
    """How `layer_densities` spreads the global density over the masked layers: in
    proportion to ``raw_density(shape)`` (None: the global density everywhere)."""

    summary: str
    raw_density: Callable[[Sequence[int]], float] | None


def _erk(shape: Sequence[int]) -> float:
    return sum(shape) / math.prod(shape)


def _er(shape: Sequence[int]) -> float:
    # ER uses only the fan-in and fan-out (output and input channels), not the kernel size.
    n_out, n_in = shape[0], shape[1] if len(shape) > 1 else 1
    return (n_in + n_out) / (n_in * n_out)


SPARSE_INITS: dict[str, SparseInit] = {
    "erk": SparseInit("Erdős–Rényi–Kernel: density_l ∝ sum(shape_l) / prod(shape_l)", _erk),
    "er": SparseInit("Erdős–Rényi: density_l ∝ (n_in + n_out) / (n_in · n_out)", _er),
    "uniform": SparseInit("every masked layer gets the global density", None),
}


@dataclass(frozen=True)
class CompatMode:
    """A `sparsity.compat` mode: whose update the engine reproduces (sparse/official.py)."""

    summary: str
    inactive_momentum: str | None  # the value the mode fixes; None: the config's own
    # The engine's behaviour object for the mode (sparse/official.py), imported when a run
    # builds it; None: the engine's own update.
    behaviour: Callable[[], Any] | None = None


def _official(name: str) -> Callable[[], Any]:
    def load() -> Any:
        from ft_dist.sparse import official

        return getattr(official, name)()

    return load


COMPAT_MODES: dict[str, CompatMode] = {
    "none": CompatMode("SPEC §4", None),
    "official-cifar": CompatMode(
        "inactive_momentum keep, and ERK-dense layers lose their ceil(f n) smallest weights "
        "at every update (mask kept all ones)",
        "keep",
        _official("OfficialCifar"),
    ),
    "official-imagenet": CompatMode(
        "a weight dropped and regrown in the same update keeps its value and momentum",
        "zero",
        _official("OfficialImagenet"),
    ),
}


def resolve_compat(data: Any) -> Any:
    """SparsityConfig 'before' validator: a compat mode fixes ``inactive_momentum``.

    Unset, it takes the mode's value; set to the other value, it is an error naming both.
    """
    if not isinstance(data, dict):
        return data
    compat = data.get("compat") or "none"
    mode = COMPAT_MODES.get(compat)
    wanted = mode.inactive_momentum if mode is not None else None
    if wanted is None:
        return data
    given = data.get("inactive_momentum")
    if given is None:
        return {**data, "inactive_momentum": wanted}
    if given != wanted:
        raise ValueError(
            f"sparsity.compat={compat} reproduces the official code, whose momentum of "
            f"inactive weights is '{wanted}': remove sparsity.inactive_momentum={given} or "
            "set sparsity.compat=none"
        )
    return data


def official_behaviour(compat: str) -> Any:
    """The engine's behaviour object for ``sparsity.compat`` (None for ``none``)."""
    mode = table_entry(COMPAT_MODES, compat, "sparsity.compat")
    return mode.behaviour() if mode.behaviour is not None else None
