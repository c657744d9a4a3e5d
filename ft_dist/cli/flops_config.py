"""`ft-dist flops --config CONFIG [key=value ...]`: price exactly the run a config trains.

Same model shape (from the config, the data recipe or the local manifest), layer densities,
ΔT, epochs and ensemble plan as `ft-dist train CONFIG`, so the cost is known before any GPU
is booked. The flag mode lives in `ft_dist.cli.flops`, the shared report and table in
`ft_dist.cli.flops_report`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ft_dist.cli.flops_report import (
    SHAPE_HINTS,
    SHAPE_KEYS,
    format_layers,
    human,
    model_flops_report,
)

if TYPE_CHECKING:
    from ft_dist.config import RunConfig
    from ft_dist.data.config import DataConfig
    from ft_dist.data.decoding import DataInfo
    from ft_dist.sparse.flops import RunCost


@dataclass(frozen=True)
class ConfigRun:
    """What a run config's cost depends on (SPEC §8), resolved as `ft-dist train` would.

    `update_every_steps` is ΔT in optimizer steps (update_every_samples / global batch,
    rounded as the DST engine rounds it); `examples_per_epoch` is what the trainer sees,
    full global batches only; both sample counts are None without a local manifest.
    """

    model: str
    model_kwargs: dict
    num_classes: int
    in_channels: int
    image_size: int
    density: float
    sparse_init: str
    dense_layers: tuple[str, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    dynamic: bool
    growth: str
    update_every_steps: int | None
    global_batch: int
    method: str
    num_members: int
    epochs: int
    reference_epochs: int
    total_epochs: int
    epochs_text: str
    train_samples: int | None = None
    examples_per_epoch: int | None = None
    shape_source: dict[str, str] = field(default_factory=dict)
    channel_sparsity: float = 0.0


def handle_config(path: str, overrides: list[str], *, as_json: bool = False) -> int:
    """Price the run that `ft-dist train path overrides...` would train."""
    from ft_dist.config import load_config
    from ft_dist.train.methods.pricing import price_method

    cfg = load_config(path, overrides)
    run = run_from_config(cfg, source=path)
    report = model_flops_report(
        run.model, run.num_classes, run.in_channels, run.image_size,
        run.density, run.sparse_init, run.dense_layers,
        kwargs=run.model_kwargs, include=run.include, exclude=run.exclude,
    )  # fmt: skip
    cost = price_method(
        run.method,
        report.dense_forward_flops,
        report.sparse_forward_flops,
        ensemble=cfg.ensemble,
        epochs=cfg.train.epochs,
        dynamic=run.dynamic,
        growth=run.growth,
        update_every_steps=run.update_every_steps,
    )
    train_flops = None
    if run.examples_per_epoch is not None:
        train_flops = cost.train_flops_per_example * run.examples_per_epoch
    advice = config_advice(cfg, run)
    if as_json:
        result = {"config": path, "overrides": list(overrides), "settings": asdict(run)}
        result |= report.to_dict() | {"run": cost.to_dict(), "train_flops": train_flops}
        print(json.dumps(result | {"dst_advice": advice}, indent=2))
    else:
        print(format_layers(report))
        print()
        print(format_config_run(path, run, cost, train_flops))
        for line in advice:
            print(f"DST             {line}")
    return 0


def config_advice(cfg: RunConfig, run: ConfigRun) -> list[str]:
    """What `ft-dist train` will warn about the DST schedule (preflight.dst_advice): a
    ΔT without updates, grown weights predicted not to survive; needs the steps per epoch,
    so nothing without a local training manifest."""
    from ft_dist.preflight import dst_advice

    if run.examples_per_epoch is None:
        return []
    model = cfg.model.resolved(
        num_classes=run.num_classes, in_channels=run.in_channels, image_size=run.image_size
    )
    resolved = cfg.model_copy(update={"model": model})
    return dst_advice(resolved, run.examples_per_epoch // run.global_batch)


def run_from_config(cfg: RunConfig, source: str = "config") -> ConfigRun:
    """The pricing inputs of a validated run config; model shape from config or data."""
    from ft_dist.data.plan import steps_per_epoch
    from ft_dist.sparse.schedule import UpdateSchedule
    from ft_dist.train.methods import method_epochs

    shape, shape_source, train_samples = model_shape(cfg, source)
    workers, accum = cfg.train.num_workers, cfg.train.grad_accum_steps
    global_batch = cfg.data.batch_size_per_worker * workers * accum
    examples_per_epoch = None
    if train_samples is not None:
        steps = steps_per_epoch(train_samples, workers, cfg.data.batch_size_per_worker)
        examples_per_epoch = steps // accum * global_batch
    epochs = method_epochs(cfg)
    return ConfigRun(
        model=cfg.model.name,
        model_kwargs=dict(cfg.model.kwargs),
        **shape,
        density=cfg.sparsity.density,
        sparse_init=cfg.sparsity.sparse_init,
        dense_layers=tuple(cfg.sparsity.dense_layers),
        include=tuple(cfg.sparsity.include),
        exclude=tuple(cfg.sparsity.exclude),
        dynamic=cfg.sparsity.is_dynamic,
        growth=cfg.sparsity.growth,
        update_every_steps=UpdateSchedule.from_config(cfg.sparsity, global_batch).every_steps,
        global_batch=global_batch,
        method=cfg.ensemble.method,
        num_members=epochs.members,
        epochs=epochs.per_run,
        reference_epochs=epochs.reference,
        total_epochs=epochs.total,
        epochs_text=epochs.text,
        train_samples=train_samples,
        examples_per_epoch=examples_per_epoch,
        shape_source=shape_source,
        channel_sparsity=cfg.sparsity.channel_sparsity,
    )


def model_shape(cfg: RunConfig, source: str) -> tuple[dict[str, int], dict[str, str], int | None]:
    """(num_classes/in_channels/image_size, where each came from, train split size or None).

    Values set in `model:` win; the rest come from the local training manifest exactly as
    `ft-dist train` fills them (`ft_dist.data.describe`); without one, channels and size
    follow an explicit `data.recipe`, and anything still missing is a user error.
    """
    from ft_dist.data.transforms import RECIPES

    shape = {key: getattr(cfg.model, key) for key in SHAPE_KEYS}
    origin = {key: "config" for key, value in shape.items() if value is not None}
    info, why_not = _local_data_info(cfg.data)
    if info is not None:
        found = {key: getattr(info, key) for key in SHAPE_KEYS}
        origin |= {key: "manifest" for key in SHAPE_KEYS if shape[key] is None}
        shape = {key: found[key] if value is None else value for key, value in shape.items()}
    elif cfg.data.recipe is not None:
        spec = RECIPES[cfg.data.recipe]
        found = {"in_channels": spec.channels, "image_size": cfg.data.image_size}
        found["image_size"] = found["image_size"] or spec.default_size
        for key, value in found.items():
            if shape[key] is None and value is not None:
                shape[key], origin[key] = value, "data.recipe"
    missing = [key for key in SHAPE_KEYS if shape[key] is None]
    if missing:
        hints = "; ".join(f"model.{key} ({SHAPE_HINTS[key]})" for key in missing)
        raise ValueError(
            f"{source}: model.{missing[0]} is not set and there is no local training manifest "
            f"to take it from ({why_not}): set {hints} in the config or as a key=value "
            "override, or write the shards to data.root first"
        )
    return shape, origin, info.num_train_samples if info is not None else None


def _local_data_info(data: DataConfig) -> tuple[DataInfo | None, str]:
    """(`describe(data)`, "") when the training manifest is a local file, else (None, why)."""
    from ft_dist.data import describe
    from ft_dist.data.manifest import local_path, manifest_relpath

    path = local_path(data.root, manifest_relpath(data.train_split))
    if path is None:
        return None, f"data.root {data.root} is remote and is not read here"
    if not path.is_file():
        return None, f"{path} not found"
    return describe(data), ""


def run_label(run: ConfigRun) -> str:
    """'EDST of 3 DST models', 'DST Ensemble of 4 static sparse models', 'single model', ..."""
    from ft_dist.train.methods import ensemble_method

    kind = "dense" if run.density >= 1.0 else "DST" if run.dynamic else "static sparse"
    label = ensemble_method(run.method).label
    return f"{label}, {run.num_members} {kind} model{'s' * (run.num_members > 1)}"


def format_config_run(path: str, run: ConfigRun, cost: RunCost, train_flops: float | None) -> str:
    epochs = run.epochs_text
    origin = ", ".join(f"{key} from {where}" for key, where in run.shape_source.items())
    update = f"ΔT = {run.update_every_steps} steps" if run.dynamic else "masks fixed"
    lines = [
        f"config          {path}",
        f"model           {run.model}: {run.num_classes} classes, "
        f"{run.in_channels}x{run.image_size}x{run.image_size} input ({origin})",
        f"sparsity        density {run.density:g} ({run.sparse_init}), {update}, "
        f"{run.growth} growth, global batch {run.global_batch}",
        f"sparse weights  {sparse_rule(run)}",
        f"run             {run_label(run)}: {epochs}",
        f"train FLOPs     {cost.train_relative:.3f}x one dense run of {cost.reference_epochs} "
        f"epochs ({human(cost.train_flops_per_example)} per training example)",
        f"inference       {human(cost.inference_flops)} per example = "
        f"{cost.inference_relative:.3f}x one dense forward",
    ]
    if run.channel_sparsity > 0:
        lines.append(
            f"channels        {run.channel_sparsity:g} of the removable channels go during "
            "training: priced above as if none did (which go, and the per-layer densities "
            "they lead to, are decided by the run); the run's summary.json and tickets price "
            "each stretch between removals (train_flops)"
        )
    if train_flops is None:
        lines.append(
            "training FLOPs  unknown: no local training manifest (train FLOPs per example x "
            "examples per epoch)"
        )
    else:
        lines.append(
            f"training FLOPs  {train_flops:.3e} ({run.train_samples} training samples, "
            f"{run.examples_per_epoch} per epoch in full global batches)"
        )
    return "\n".join(lines)


def sparse_rule(run: ConfigRun) -> str:
    """Which weights the sparsity rule selects, as configured."""
    parts = ["Conv/Linear and attention projection weights (default rule)"]
    if run.include:
        parts.append(f"+ include {list(run.include)}")
    if run.exclude:
        parts.append(f"- exclude {list(run.exclude)}")
    if run.dense_layers:
        parts.append(f"- dense_layers {list(run.dense_layers)}")
    return " ".join(parts)
