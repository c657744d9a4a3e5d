"""What a sweep varies: grid overrides, a random-search space file, and the points drawn.

    fixed, axes = split_overrides(["train.epochs=4", "sparsity.density=0.05,0.1", "optim.lr=0.05,0.1"])
    dims = load_space("space.yaml")              # {"optim.lr": Dimension("loguniform", ...)}
    points = draw_points(axes, dims, num_samples=3, seed=0)

An override whose value holds a comma at its top level is a grid axis, as in Hydra's
multirun: ``sparsity.density=0.05,0.1,0.2``. Commas inside brackets, braces or quotes do not
split, so YAML flow values stay whole (``sparsity.density=[0.5,0.75]`` and
``x={a: 0.5, b: 0.7}`` are single values; ``x=[1,2],[3,4]`` is a grid of two lists).

A space file maps dotted keys to one distribution each (Ray Tune's sampling):

    optim.lr: {loguniform: [0.01, 0.2]}
    sparsity.density: {uniform: [0.05, 0.3]}
    sparsity.growth: {choice: [gradient, random]}

The points are drawn here, on the driver, from a seeded generator: a re-run of the same
command draws the same points, so it finds the same trial directories and resumes them, and
every point can be checked before any trial starts. Each of the ``num_samples`` draws is
combined with every grid point (Tune's rule for grid_search with sampled values). Torch-free
and Ray-free except for Tune's samplers, imported when points are drawn.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ft_dist.layout import trial_dir_name
from ft_dist.utils import first_line

OPENERS = {"[": "]", "{": "}", "(": ")"}
KINDS = ("choice", "uniform", "loguniform")
SPACE_EXAMPLE = "e.g. optim.lr: {loguniform: [0.01, 0.2]}"


def split_top_level(raw: str) -> list[str]:
    """``"0.1,[1,2],{a: 1, b: 2}"`` -> ``["0.1", "[1,2]", "{a: 1, b: 2}"]``: commas split only
    outside brackets, braces, parentheses and quotes. Unbalanced text is one value (YAML
    reports it when the override is read)."""
    parts, depth, quote, start = [], [], None, 0
    for index, char in enumerate(raw):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in OPENERS:
            depth.append(OPENERS[char])
        elif depth and char == depth[-1]:
            depth.pop()
        elif char == "," and not depth:
            parts.append(raw[start:index])
            start = index + 1
    if quote or depth:
        return [raw]
    return [*parts, raw[start:]]


def parse_value(raw: str) -> Any:
    """An override's value as `config.apply_overrides` reads it (YAML; text when not YAML)."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[Any]]]:
    """The overrides every trial shares, and the grid axes (key -> its values, in order)."""
    fixed: list[str] = []
    axes: dict[str, list[Any]] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        values = split_top_level(raw) if sep else [raw]
        if len(values) == 1:
            fixed.append(override)
            continue
        if key in axes:
            raise ValueError(f"override {key}: given twice; write its values once, comma-separated")
        if any(not value.strip() for value in values):
            raise ValueError(
                f"override {override!r}: an empty value between commas; write "
                f"{key}=A,B,C (quote a value that holds a comma: {key}='a,b')"
            )
        parsed = [parse_value(value) for value in values]
        duplicates = {canonical(v) for v in parsed if parsed.count(v) > 1}
        if duplicates:
            raise ValueError(f"override {key}: value {sorted(duplicates)[0]} is listed twice")
        axes[key] = parsed
    return fixed, axes


@dataclass(frozen=True)
class Dimension:
    """One sampled key: ``choice`` over ``values``, or ``uniform`` / ``loguniform`` in
    [low, high]."""

    kind: str
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0

    def tune_domain(self) -> Any:
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.kind)(self.low, self.high)

    def corners(self) -> tuple[Any, ...]:
        """Values that stand for the whole dimension in the checks before a sweep: every
        choice, or both bounds (config fields accept intervals)."""
        return self.values if self.kind == "choice" else (self.low, self.high)


def load_space(path: str | Path) -> dict[str, Dimension]:
    """Read a space file (see the module doc); every mistake is one line naming the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--space file {path} not found ({SPACE_EXAMPLE})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"--space {path}: not valid YAML: {first_line(error)}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--space {path}: must map dotted keys to distributions, {SPACE_EXAMPLE}")
    return {str(key): parse_dimension(path, str(key), spec) for key, spec in data.items()}


def parse_dimension(path: Path, key: str, spec: Any) -> Dimension:
    where = f"--space {path}: {key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ValueError(f"{where}: give one of {', '.join(KINDS)} (got {spec!r}), {SPACE_EXAMPLE}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where}: choice takes a non-empty list, e.g. {{choice: [a, b]}}")
        return Dimension(kind, values=tuple(args))
    numbers = isinstance(args, list) and len(args) == 2
    if not numbers or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise ValueError(f"{where}: {kind} takes [low, high], two numbers (got {args!r})")
    low, high = float(args[0]), float(args[1])
    if not low < high:
        raise ValueError(f"{where}: {kind} needs low < high (got [{low:g}, {high:g}])")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}: loguniform needs low > 0 (got {low:g}); use uniform")
    return Dimension(kind, low=low, high=high)


def draw_points(
    axes: dict[str, list[Any]],
    dims: dict[str, Dimension],
    num_samples: int = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every trial's swept values: each grid point with each of ``num_samples`` draws of
    the space (the same draws on every call with the same ``seed``)."""
    both = sorted(set(axes) & set(dims))
    if both:
        raise ValueError(f"{both[0]} is both a grid override and in the --space file; keep one")
    if num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1 (got {num_samples})")
    if num_samples > 1 and not dims:
        raise ValueError(
            "--num-samples draws points from a --space FILE; give one, or list grid values "
            "as key=a,b,c"
        )
    grid = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    draws: list[dict[str, Any]] = [{}]
    if dims:
        import numpy as np

        rng = np.random.default_rng(seed)
        draws = [
            {key: plain(dim.tune_domain().sample(random_state=rng)) for key, dim in dims.items()}
            for _ in range(num_samples)
        ]
    return [{**point, **draw} for draw in draws for point in grid]


def plain(value: Any) -> Any:
    """A drawn value as plain Python (numpy scalars become int / float)."""
    return value.item() if hasattr(value, "item") else value


def canonical(value: Any) -> str:
    """A value as JSON, which YAML reads back as the same value."""
    return json.dumps(value, sort_keys=True)


def as_overrides(point: dict[str, Any]) -> list[str]:
    """``{"optim.lr": 0.1}`` -> ``["optim.lr=0.1"]`` for `config.load_config`."""
    return [f"{key}={canonical(value)}" for key, value in point.items()]


def trial_name(point: dict[str, Any]) -> str:
    """``trial-<8 hex>``: a hash of the swept values, so that the same values always find
    the same run directory (and a resume continues it)."""
    digest = hashlib.sha256(canonical(point).encode()).hexdigest()
    return trial_dir_name(digest[:8])


def is_log_scale(values: list[Any]) -> bool:
    """Plot numbers spanning a factor of 10 or more, all positive, on a log axis."""
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return (
        len(numbers) == len(values)
        and min(numbers, default=0) > 0
        and (max(numbers) / min(numbers) >= 10 - 1e-9)
        and all(math.isfinite(v) for v in numbers)
    )
