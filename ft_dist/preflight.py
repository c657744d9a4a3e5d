"""Driver-side checks before any Ray Train worker starts.

A mistake that is the same on every try -- a missing split, a shard that no longer matches
its manifest, more workers than the cluster can ever hold -- is found here in seconds with
a message naming the key and the fix, instead of inside the workers after Ray's start-up
(30-60 s per try), after an epoch (a missing val split) or after all training (a missing
test split). `ft-dist train` runs, in order:

    check_inputs(cfg)     # no Ray needed: data, splits, shard integrity, the method's
                          # schedule (EDST phases), model shape, dirs
    connect(...)          # join or start the cluster
    check_cluster(cfg)    # CPUs/GPUs per worker x train.num_workers vs the cluster

Every check raises ValueError / FileNotFoundError, which the CLI prints as one line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ft_dist.config import RunConfig
from ft_dist.layout import run_dir
from ft_dist.private_api import autoscaler_max_resources
from ft_dist.train.config import format_resources, worker_resources


def check_inputs(cfg: RunConfig) -> Any:
    """Data, splits, shards (per data.verify), model shape and writable output dirs.

    Returns the dataset's DataInfo. `cfg` must already have absolute paths
    (worker.absolute_paths), as the workers will see them.
    """
    info = check_data(cfg)
    check_schedule(cfg, info)
    model = check_model(cfg, info)
    check_writable(cfg)
    check_disk_space(cfg, model)
    return info


def run_advice(cfg: RunConfig, info: Any) -> list[str]:
    """`dst_advice` at the optimizer steps per epoch the loop will have (samples // global
    batch), for `ft-dist train` to print before the workers start."""
    from ft_dist.train.setup import batch_arithmetic

    _, global_batch = batch_arithmetic(
        cfg.train, cfg.data.batch_size_per_worker, cfg.train.num_workers
    )
    resolved = cfg.model_copy(
        update={
            "model": cfg.model.resolved(
                num_classes=info.num_classes,
                in_channels=info.in_channels,
                image_size=info.image_size,
            )
        }
    )
    return dst_advice(resolved, info.num_train_samples // global_batch)


def check_data(cfg: RunConfig) -> Any:
    """Every split the run names (train, val, test) exists, is labelled and indexes the
    training classes; local shards match their manifest; one epoch has enough shards and
    samples for train.num_workers ranks and train.grad_accum_steps."""
    from ft_dist.data.manifest import read_manifest
    from ft_dist.data.pipeline import check_dataset  # imports torch: only when checking
    from ft_dist.data.plan import steps_per_epoch

    data = cfg.data
    read_manifest(data.root, data.train_split)  # a wrong data.root is named as such first
    for key, split in (("val_split", data.val_split), ("test_split", data.test_split)):
        if split is not None:
            check_eval_split(data.root, key, split)
    info = check_dataset(data, world_size=cfg.train.num_workers)
    batches = steps_per_epoch(
        info.num_train_samples, cfg.train.num_workers, data.batch_size_per_worker
    )
    if batches < cfg.train.grad_accum_steps:  # the loop's optimizer steps per epoch
        raise ValueError(
            f"train.grad_accum_steps={cfg.train.grad_accum_steps} exceeds the {batches} "
            f"batches per epoch of split {data.train_split!r}; lower train.grad_accum_steps "
            "or data.batch_size_per_worker"
        )
    return info


def check_schedule(cfg: RunConfig, info: Any) -> None:
    """The method's rules that need the run's steps (EDST: every refinement phase makes a
    DST update, so that it can hold ensemble.num_members), at the optimizer steps per
    epoch and global batch the loop will have: samples // global batch."""
    from ft_dist.train.methods import ensemble_method
    from ft_dist.train.setup import batch_arithmetic

    _, global_batch = batch_arithmetic(
        cfg.train, cfg.data.batch_size_per_worker, cfg.train.num_workers
    )
    steps_per_epoch = info.num_train_samples // global_batch
    ensemble_method(cfg.ensemble.method).check_steps(cfg, steps_per_epoch, global_batch)


def check_eval_split(root: str, key: str, split: str) -> None:
    """data.val_split / data.test_split names a labelled split of the dataset."""
    from ft_dist.data.manifest import MANIFEST_NAME, local_path, read_manifest

    try:
        labeled = read_manifest(root, split).labeled
    except FileNotFoundError as error:
        base = local_path(root, "")
        if base is None:  # remote: the reader's message says what it tried
            raise FileNotFoundError(f"data.{key}={split!r}: {error}") from None
        found = sorted(p.parent.name for p in base.glob(f"*/{MANIFEST_NAME}"))
        raise FileNotFoundError(
            f"data.{key}={split!r}: no such split under {root} (splits there: {found}); set "
            f"data.{key} to one of them or null, or write it with `ft-dist shards ... "
            f"--split {split}`"
        ) from None
    if not labeled:
        raise ValueError(
            f"data.{key}={split!r} names a split without labels (an OoD set?) under "
            f"{root}; set data.{key} to a labelled split, or null"
        )


def check_model(cfg: RunConfig, info: Any) -> Any:
    """The model builds for the data's shape (on the meta device: no memory, no time);
    returns that meta-device model."""
    model = cfg.model
    if model.num_classes is not None and model.num_classes < info.num_classes:
        raise ValueError(
            f"model.num_classes={model.num_classes} is fewer than the {info.num_classes} "
            f"classes of {cfg.data.root}; remove model.num_classes (it then comes from the data)"
        )
    if model.in_channels is not None and model.in_channels != info.in_channels:
        raise ValueError(
            f"model.in_channels={model.in_channels} but recipe {info.recipe!r} feeds "
            f"{info.in_channels}-channel images; remove model.in_channels or change data.recipe"
        )
    resolved = model.resolved(
        num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size
    )
    return check_model_builds(resolved, cfg.sparsity)


def check_model_builds(model: Any, sparsity: Any) -> Any:
    """The model's name resolves (timm name, module, file, callable), it builds, a tiny batch
    gives one logit per class, and the sparsity rule selects something to sparsify. Runs on
    the meta device (no weights are allocated); returns that meta-device model."""
    import torch

    from ft_dist.models import build_model_from_config, verify_model_name
    from ft_dist.sparse.allocation import maskable_parameters

    verify_model_name(model.name)
    with torch.device("meta"):
        network = build_model_from_config(model)
        batch = torch.zeros(2, model.in_channels, model.image_size, model.image_size)
        try:
            output = network.eval()(batch)
        except Exception as error:  # noqa: BLE001 - any failure here is the model's
            first = (str(error).splitlines() or [""])[0][:200]
            raise ValueError(
                f"model.name={model.name}: a batch of 2 x {model.in_channels} x "
                f"{model.image_size} x {model.image_size} images fails in forward "
                f"({type(error).__name__}: {first}); check model.kwargs (e.g. patch_size must "
                "divide the image size) or the data recipe"
            ) from None
    if not torch.is_tensor(output) or tuple(output.shape) != (2, model.num_classes):
        shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        raise ValueError(
            f"model.name={model.name}: outputs {shape} for a batch of 2, not (2, "
            f"{model.num_classes}) logits for the dataset's {model.num_classes} classes; "
            "build the classifier with num_classes"
        )
    if sparsity.density < 1.0:
        chosen = maskable_parameters(
            network, sparsity.dense_layers, sparsity.include, sparsity.exclude
        )
        if not chosen:
            raise ValueError(
                f"model.name={model.name}: nothing to sparsify (the sparsity rule leaves no "
                "Conv/Linear or attention weight); add weights with sparsity.include "
                "patterns, or set sparsity.density=1.0 for a dense run"
            )
        check_density_floor({name: tuple(p.shape) for name, p in chosen.items()}, sparsity)
    if sparsity.channel_sparsity > 0:
        check_channel_groups(model, sparsity)
    return network


def check_density_floor(shapes: dict[str, tuple[int, ...]], sparsity: Any) -> None:
    """Refuse a density at which a sparse layer rounds to no active weight (the engine would
    hold it at one, and the run would train to chance), naming the layer and the smallest
    density that gives every layer at least one."""
    from ft_dist.sparse.allocation import layer_densities, starved_layers

    def starved(density: float) -> list[str]:
        return starved_layers(shapes, layer_densities(shapes, density, sparsity.sparse_init))

    empty = starved(sparsity.density)
    if not empty:
        return
    low, high = sparsity.density, 1.0  # bisect the smallest density that starves none
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if not starved(middle) else (middle, high)
    name = empty[0]
    raise ValueError(
        f"sparsity.density={sparsity.density:g} leaves {len(empty)} sparse layer(s) without "
        f"an active weight (e.g. {name}, {math.prod(shapes[name])} weights): training would "
        f"not learn there; use sparsity.density >= {_round_up(high):g}, or keep such layers "
        "dense with sparsity.dense_layers / sparsity.exclude"
    )


def _round_up(value: float) -> float:
    """``value`` rounded up to 2 significant digits."""
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / scale) * scale


def check_channel_groups(model: Any, sparsity: Any) -> None:
    """Channel-level DST can cut this model's channels: its groups trace, and every group the
    config names by key verifies a trial cut (others that do not are kept whole, with a
    warning). The same check every worker runs at its first forward, done here on CPU with
    random weights, so that a model that cannot be cut is refused before any worker starts."""
    import torch

    from ft_dist.models import build_model_from_config
    from ft_dist.sparse.channels import verified_structure

    with torch.device("cpu"):
        network = build_model_from_config(model)
    example = torch.zeros(1, model.in_channels, model.image_size, model.image_size)
    verified_structure(network, example, sparsity.channel_group_sparsity)


def check_writable(cfg: RunConfig) -> None:
    """The run directory (and a local ray.storage_path) can be created and written."""
    places = [("train.output_dir", run_dir(cfg.train))]
    storage = cfg.ray.storage_path
    if storage and ("://" not in storage or storage.startswith("file://")):
        places.append(("ray.storage_path", Path(storage.removeprefix("file://"))))
    for key, path in places:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"{key}: cannot create {path} ({error}); choose a writable dir"
            ) from None
        if not os.access(path, os.W_OK):
            raise ValueError(f"{key}: {path} is not writable; choose a writable dir")


def check_disk_space(cfg: RunConfig, model: Any) -> None:
    """The run directory (and a local ray.storage_path on another file system) has room
    for train.keep_checkpoints checkpoints, the one being written, and the tickets."""
    from ft_dist.train.diskspace import disk_space_problems

    problems = disk_space_problems(cfg, model)
    if problems:
        raise ValueError(problems[0])


# --------------------------------------------------------------------------- cluster
def workers_to_start(train: Any) -> int:
    """The workers a run needs to start: an elastic run (train.num_workers: [min, max])
    starts on its minimum (a node may be down) and grows later; others need them all."""
    return train.min_workers or train.num_workers


def check_cluster(cfg: RunConfig) -> None:
    """train.num_workers workers (an elastic run: its minimum) fit the connected Ray cluster
    (its autoscaler's maximum when it has one), else fail now: Ray would wait forever."""
    import ray

    need, num_workers = worker_resources(cfg.ray), workers_to_start(cfg.train)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    ceiling = autoscaler_max_resources()
    if ceiling is not None:  # nodes may still be added: only totals are known
        nodes = [ceiling]
    room = room_for_workers(nodes, need)
    if room < num_workers:
        raise ValueError(cluster_message(num_workers, need, nodes, room, ceiling is not None))


def room_for_workers(nodes: list[dict[str, float]], need: dict[str, float]) -> int:
    """How many workers needing `need` each fit on `nodes` (a worker lies on one node)."""
    total = 0
    for resources in nodes:
        fits = [
            math.floor(resources.get(name, 0.0) / amount + 1e-9)
            for name, amount in need.items()
            if amount > 0
        ]
        total += min(fits, default=0)
    return total


def cluster_message(
    num_workers: int,
    need: dict[str, float],
    nodes: list[dict[str, float]],
    room: int,
    autoscaling: bool,
) -> str:
    have = {name: sum(node.get(name, 0.0) for node in nodes) for name in need}
    where = "can grow to" if autoscaling else f"has {len(nodes)} node(s) with"
    fix = (
        f"set train.num_workers={room} (or fewer)"
        if room
        else "lower ray.cpus_per_worker / ray.gpus_per_worker (or set ray.use_gpu=false)"
    )
    return (
        f"train.num_workers={num_workers} workers x {format_resources(need)} each do not fit the Ray "
        f"cluster, which {where} {format_resources(have)} in all (room for {room}); {fix}, or add nodes"
    )


# --------------------------------------------------------------------------- DST advice
def dst_advice(cfg: RunConfig, steps_per_epoch: int) -> list[str]:
    """Warnings (not errors: the run may be meant so) about a DST schedule that will not
    explore: a ΔT that makes no update within the run (a static mask in effect), and, for
    an optimizer that moves a weight by about lr per step (AdamW), grown weights that are
    predicted to stay under the magnitude the drop removes (sparse/health.py)."""
    from ft_dist.sparse.health import no_update_warning
    from ft_dist.sparse.schedule import UpdateSchedule
    from ft_dist.sparse.scores import drop_criterion
    from ft_dist.train.optimizers import optimizer_entry
    from ft_dist.train.setup import batch_arithmetic

    sparsity = cfg.sparsity
    if not sparsity.is_dynamic:
        return []
    _, global_batch = batch_arithmetic(
        cfg.train, cfg.data.batch_size_per_worker, cfg.train.num_workers
    )
    every = UpdateSchedule.from_config(sparsity, global_batch).every_steps
    total = steps_per_epoch * cfg.num_epochs
    advice = [no_update_warning(every, total, sparsity.stop_step)]
    # A drop by |w| alone: others protect grown weights (grace) or weigh a gradient (MEST).
    drop = drop_criterion(sparsity.drop)
    by_magnitude = not (drop.exempts or drop.needs_gradient or drop.ema_of is not None)
    predictable = by_magnitude and optimizer_entry(cfg.optim.name).moves_by_lr
    if every and predictable and advice[0] is None:
        advice.append(predicted_churn_warning(cfg, every))
    return [line for line in advice if line is not None]


def predicted_churn_warning(cfg: RunConfig, every_steps: int) -> str | None:
    """sparse/health.py's prediction for this config: the model's initial sparse weights
    (built on the CPU, as a worker builds them) give the drop threshold."""
    import torch

    from ft_dist.models import build_model_from_config
    from ft_dist.sparse.allocation import maskable_parameters
    from ft_dist.sparse.health import initial_drop_threshold, predicted_churn

    sparsity = cfg.sparsity
    with torch.device("cpu"):
        network = build_model_from_config(cfg.model)
    weights = maskable_parameters(
        network, sparsity.dense_layers, sparsity.include, sparsity.exclude
    )
    threshold = initial_drop_threshold(weights, sparsity.drop_fraction)
    return predicted_churn(cfg.optim.lr, every_steps, sparsity.drop_fraction, threshold)
