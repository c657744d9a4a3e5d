"""The run config: YAML → typed `RunConfig`, dotted command-line overrides, clear errors.

    cfg = load_config("configs/demo_dst.yaml", ["optim.lr=0.05", "sparsity.density=0.1"])

A config file has one top-level section per component, each validated by the section type
its owner defines (unknown keys, wrong types and out-of-range values are errors):

    model     ft_dist.models.ModelConfig        data      ft_dist.data.DataConfig
    sparsity  ft_dist.sparse.SparsityConfig     optim     ft_dist.train.config.OptimConfig
    train     ft_dist.train.config.TrainConfig  ray       ft_dist.train.config.RayConfig
    tracking  ft_dist.tracking.TrackingConfig   ensemble  ft_dist.train.ensemble_config.EnsembleConfig

Every error is a ValueError naming the file, the dotted key and what is allowed, e.g.
``configs/x.yaml: train.zero_stage: Input should be 0, 1 or 2 (got 5)``.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from ft_dist.configbase import Section
from ft_dist.data.config import DataConfig
from ft_dist.models.config import ModelConfig
from ft_dist.sparse.config import SparsityConfig
from ft_dist.tracking import TrackingConfig
from ft_dist.train.config import OptimConfig, RayConfig, TrainConfig
from ft_dist.train.ensemble_config import EnsembleConfig
from ft_dist.train.methods import ensemble_method, method_epochs
from ft_dist.train.strategies import check_strategy_supports
from ft_dist.utils import write_text_atomic


class RunConfig(Section):
    """One training run (one member, or one EDST run that yields M members)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)

    @property
    def num_epochs(self) -> int:
        """Epochs this run trains: ``train.epochs``, or t_ex + M · t_re for EDST."""
        return method_epochs(self).per_run

    @model_validator(mode="after")
    def _check_combination(self) -> RunConfig:
        ensemble_method(self.ensemble.method).check(self)
        check_strategy_supports(self.train.strategy, self.sparsity)
        return self


# --------------------------------------------------------------------------- loading
def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``key.sub=value`` overrides, validate everything."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.yaml"))
        hint = (
            f"pass one of its {len(found)} YAML files, e.g. {found[0]}"
            if found
            else ("it holds no .yaml file; pass a YAML config file")
        )
        raise ValueError(f"config {path} is a directory, not a file: {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if data is None or data == {}:  # empty or comments only: never train on defaults unasked
        raise ValueError(
            f"{path} is empty: write at least the data section (data.root) and the model "
            "you mean, e.g. start from configs/demo_dst.yaml"
        )
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections ({_sections()})")
    return config_from_dict(apply_overrides(data, overrides), source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict; errors name ``source`` and the dotted key."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ValueError(format_validation_error(error, source)) from None


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` set; values are parsed as YAML
    (``0.1`` → float, ``true`` → bool, ``null`` → None, ``[0.5,0.75]`` → list)."""
    data = _deep_copy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {override!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.split("."), value, key)
    return data


def _set_dotted(data: dict[str, Any], parts: list[str], value: Any, key: str) -> None:
    if parts[0] not in RunConfig.model_fields:
        raise ValueError(f"override {key}: unknown section {parts[0]!r}; allowed: {_sections()}")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _sections() -> str:
    return ", ".join(RunConfig.model_fields)


# --------------------------------------------------------------------------- error messages
def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: ``source: dotted.key: what is wrong (got value)``."""
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"] if not isinstance(part, int)]
        key = ".".join(loc)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            message = f"unknown key; allowed keys{' of ' + '.'.join(loc[:-1]) if loc[:-1] else ''}: {allowed}"
        elif item["type"] == "missing":
            message = "required but missing"
        elif "input" in item and not isinstance(item["input"], dict):
            message = f"{message} (got {item['input']!r})"
        lines.append(f"{source}: {key}: {message}" if key else f"{source}: {message}")
    return "\n".join(lines)


def _allowed_keys(loc: list[str]) -> str:
    model: type[BaseModel] | None = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if model else None
        model = _model_type(field.annotation) if field else None
    return ", ".join(model.model_fields) if model else "?"


def _model_type(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X``, ``X | None`` or ``Optional[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_type(arg)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- saving
def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain YAML/JSON-able dict of every resolved value (defaults included).

    ``train.epochs`` is written as the epochs the run really trains (for EDST, t_ex + M·t_re),
    so the saved file reloads through `load_config` and says what happened.
    """
    values = cfg.model_dump(mode="json")
    values["train"]["epochs"] = cfg.num_epochs
    return values


def save_config(cfg: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically); `load_config` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = config_to_dict(cfg)
    values["model"].pop("source", None)  # a builder file's text stays out of the record
    return write_text_atomic(path, yaml.safe_dump(values, sort_keys=False))
