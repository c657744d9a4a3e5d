"""Channel-slim ensembles against one dense model, side by side in one process.

* ``ft-dist bench infer --export DIR``: the exported program (``DIR/ensemble.pt2``: M slim
  members, normalisation and softmax averaging inside; by default packed into one network)
  against one dense model of the same architecture wrapped the same way and exported the
  same way (`torch.export`), and against the separate members' program rebuilt from the
  artifact, on the same random batch, runs interleaved, medians compared, at each batch
  size (``--batch-sizes 64 256``).
* ``ft-dist bench infer --synthetic resnet50``: the same at 224 px with no training: M
  ResNet-50 members with ERK masks at the density, each cut channel-slim by one removal of
  channel-level DST (`sparsity.channel_sparsity`, unmasked mean magnitude of the freshly
  initialised masked weights, the same global selection as in training), exported as an
  ensemble program. At initialisation UMM mostly follows the ERK densities, so which
  channels go differs from a trained run; the slim shapes, and so the speed, depend only on
  how many go where. Both the packed program (what `ft-dist export` ships) and the separate
  members are timed.

The ratio reported is ensemble images/s ÷ dense images/s (>= 1.0: the M-member ensemble is
at least as fast as one dense model); ``separate_vs_dense`` is the same for the members run
one after another.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ft_dist.export.timing import interleaved_medians, time_pair


def _exported(
    members: Sequence[nn.Module],
    mean: Sequence[float],
    std: Sequence[float],
    shape: Sequence[int],
    form: str = "separate",
) -> tuple[nn.Module, str]:
    """(The program of ``members`` through torch.export (dynamic batch) as `ft-dist export`
    ships it with ``--program form``, the form it has: "separate" where packing fell back)."""
    from ft_dist.export.program import ensemble_program, trace_program

    program, details = ensemble_program(members, mean, std, shape, form)
    return trace_program(program, shape).module(), details["form"]


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def compare(
    ensemble: Callable[[torch.Tensor], torch.Tensor],
    dense: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    repeats: int,
    separate: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Median seconds of each over interleaved runs (after a warm-up), as images/s; with
    ``separate`` (the members one after another) timed in the same loop."""
    runs = {"ensemble": lambda: ensemble(images), "dense": lambda: dense(images)}
    if separate is not None:
        runs["separate"] = lambda: separate(images)
    with torch.inference_mode():
        seconds = interleaved_medians(runs, repeats)
    batch, ensemble_s, dense_s = images.shape[0], seconds["ensemble"], seconds["dense"]
    result = {
        "ensemble_images_per_s": batch / ensemble_s,
        "dense_images_per_s": batch / dense_s,
        "ensemble_vs_dense": dense_s / ensemble_s,
        "ensemble_ms_per_image": 1e3 * ensemble_s / batch,
        "dense_ms_per_image": 1e3 * dense_s / batch,
    }
    if separate is not None:
        result["separate_images_per_s"] = batch / seconds["separate"]
        result["separate_vs_dense"] = dense_s / seconds["separate"]
    return result


def measure_export(directory: str | Path, batch_size: int, repeats: int) -> dict[str, Any]:
    """The exported ensemble of ``directory`` against one dense model of its architecture."""
    return measure_export_sizes(directory, [batch_size], repeats, separate=False)[0]


def measure_export_sizes(
    directory: str | Path, batch_sizes: Sequence[int], repeats: int, separate: bool = True
) -> list[dict[str, Any]]:
    """One row per batch size: the exported ensemble of ``directory`` against one dense
    model of its architecture (and, with ``separate``, when the export is packed, against
    the separate members' program rebuilt from the artifact), timed in one loop."""
    from ft_dist.export import read_artifact
    from ft_dist.models import build_model_from_config, model_config_from_meta

    artifact = read_artifact(directory)
    manifest_program = artifact.manifest.get("program")
    if not manifest_program:
        raise ValueError(f"{directory} has no ensemble.pt2 (exported with --no-program)")
    form = manifest_program.get("form", "separate")
    facts = artifact.preprocessing
    shape = (facts["in_channels"], facts["image_size"], facts["image_size"])
    meta = artifact.members[0].meta
    torch.manual_seed(0)
    dense = build_model_from_config(model_config_from_meta(meta, str(directory)))
    dense_program, _ = _exported([dense], facts["mean"], facts["std"], shape)
    program = torch.export.load(str(Path(directory) / "ensemble.pt2")).module()
    separate_program = None
    if separate and form == "packed":
        members = [member.model() for member in artifact.members]
        separate_program, _ = _exported(members, facts["mean"], facts["std"], shape)
    channels = [m.channels or {} for m in artifact.members]
    rows = []
    for batch_size in batch_sizes:
        images = torch.rand(batch_size, *shape, generator=torch.Generator().manual_seed(1))
        timed = compare(program, dense_program, images, repeats, separate_program)
        if separate and form != "packed":  # the shipped program is the separate one
            timed.update(
                separate_images_per_s=timed["ensemble_images_per_s"],
                separate_vs_dense=timed["ensemble_vs_dense"],
            )
        rows.append(
            {
                "source": str(directory),
                "model": meta["model"],
                "members": len(artifact.members),
                "program": form,
                "batch_size": batch_size,
                "image_shape": list(shape),
                "dense_parameters": _parameters(dense),
                "member_parameters": [c.get("parameters") for c in channels],
                "kept_channels": channels[0].get("kept"),
                "group_channels": channels[0].get("size"),
                **timed,
            }
        )
    return rows


def one_removal_config(
    density: float, channel_sparsity: float, allocation: str = "uniform", seed: int = 0
):
    """ERK masks at ``density`` and, with ``channel_sparsity`` > 0, its whole channel removal
    at the first update (step 1), no weight swapped (synthetic members, bench train-slim)."""
    from ft_dist.sparse import SparsityConfig

    channels = {
        "channel_sparsity": channel_sparsity,
        "channel_end_step": 1,
        "channel_allocation": allocation,
    }
    return SparsityConfig(
        density=density,
        update_every_steps=1,
        growth="random",
        drop_fraction=0.0,
        seed=seed,
        **(channels if channel_sparsity > 0 else {}),
    )


def synthetic_members(
    model: str,
    num_classes: int,
    image_size: int,
    members: int,
    density: float,
    channel_sparsity: float,
    in_channels: int = 3,
    allocation: str = "uniform",
) -> list[nn.Module]:
    """M members with ERK masks, each cut channel-slim by one channel-level DST removal."""
    from ft_dist.models import build_model
    from ft_dist.sparse import DynamicSparsity
    from ft_dist.sparse.slim import slim_model

    shape = (in_channels, image_size, image_size)
    result = []
    for member in range(members):
        torch.manual_seed(member)
        network = build_model(model, num_classes, in_channels, image_size)
        config = one_removal_config(density, channel_sparsity, allocation, seed=member)
        sparsity = DynamicSparsity(network, None, config)
        if channel_sparsity > 0:
            network.eval()
            with torch.no_grad():
                network(torch.zeros(1, *shape))  # the first forward traces the structure
            sparsity.step()  # one update: the removal
            network = slim_model(network, sparsity.masks, torch.zeros(1, *shape)).model
        result.append(network.eval())
    return result


def measure_synthetic(
    model: str,
    members: int,
    density: float,
    channel_sparsities: Sequence[float],
    batch_size: int | Sequence[int],
    repeats: int,
    image_size: int = 224,
    num_classes: int = 1000,
    allocation: str = "uniform",
) -> list[dict[str, Any]]:
    """One row per channel sparsity and batch size: the exported slim ensemble (packed, as
    `ft-dist export` ships it) vs one dense model vs the separate members, in one loop."""
    shape = (3, image_size, image_size)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    from ft_dist.models import build_model

    batch_sizes = [batch_size] if isinstance(batch_size, int) else list(batch_size)
    torch.manual_seed(0)
    dense = build_model(model, num_classes, 3, image_size)
    dense_program, _ = _exported([dense], mean, std, shape)
    rows = []
    for fraction in channel_sparsities:
        start = time.perf_counter()
        slim = synthetic_members(
            model, num_classes, image_size, members, density, fraction, allocation=allocation
        )
        program, form = _exported(slim, mean, std, shape, "packed")
        separate = _exported(slim, mean, std, shape)[0] if form == "packed" else None
        build_seconds = time.perf_counter() - start
        for size in batch_sizes:
            images = torch.rand(size, *shape, generator=torch.Generator().manual_seed(1))
            timed = compare(program, dense_program, images, repeats, separate)
            if separate is None:
                timed.update(
                    separate_images_per_s=timed["ensemble_images_per_s"],
                    separate_vs_dense=timed["ensemble_vs_dense"],
                )
            rows.append(
                {
                    "model": model,
                    "members": members,
                    "density": density,
                    "channel_sparsity": fraction,
                    "channel_allocation": allocation,
                    "program": form,
                    "batch_size": size,
                    "image_shape": list(shape),
                    "dense_parameters": _parameters(dense),
                    "member_parameters": [_parameters(m) for m in slim],
                    "build_seconds": build_seconds,
                    **timed,
                }
            )
    return rows


def format_rows(rows: list[dict[str, Any]], title: str) -> str:
    lines = [
        title,
        f"{'model':<18}{'M':>3}{'ch.sp':>7}{'program':>9}{'batch':>7}{'params/member':>15}"
        f"{'dense img/s':>13}{'ens. img/s':>12}{'ens/dense':>11}{'sep/dense':>11}{'ms/img':>8}",
    ]
    for row in rows:
        params = row["member_parameters"][0] or 0
        fraction = row.get("channel_sparsity")
        label = "-" if fraction is None else f"{fraction:.2f}"
        separate = row.get("separate_vs_dense")
        separate_label = "-" if separate is None else f"{separate:.2f}x"
        lines.append(
            f"{row['model'][:17]:<18}{row['members']:>3}{label:>7}"
            f"{row.get('program', 'separate'):>9}{row['batch_size']:>7}"
            f"{params / max(row['dense_parameters'], 1):>14.2f}x"
            f"{row['dense_images_per_s']:>13.1f}{row['ensemble_images_per_s']:>12.1f}"
            f"{row['ensemble_vs_dense']:>10.2f}x{separate_label:>11}"
            f"{row['ensemble_ms_per_image']:>8.2f}"
        )
    return "\n".join(lines)


GPU_GOAL = 1.0  # M = 3 slim members at least as fast as one dense model
GPU_CHANNEL_SPARSITY = 0.5


def check_infer_slim(device, sizes, workdir: Path) -> dict[str, Any]:
    """`ft-dist bench gpu` check: M = 3 channel-slim members (channel sparsity 0.5, ERK
    d = 0.2) vs one dense model, both as serving programs (norms folded, channels_last),
    bf16 autocast on CUDA, eager, same batch, interleaved images/s (ResNet-50 at 224 px on
    the GPU; the tiny size on a CPU)."""
    from ft_dist.export import serving_program
    from ft_dist.models import build_model

    del workdir
    cuda = device.type == "cuda"
    shape = (sizes.in_channels, sizes.image_size, sizes.image_size)
    members = synthetic_members(
        sizes.model, sizes.num_classes, sizes.image_size, 3, 0.2, GPU_CHANNEL_SPARSITY,
        in_channels=sizes.in_channels,
    )  # fmt: skip
    torch.manual_seed(0)
    dense = build_model(sizes.model, sizes.num_classes, sizes.in_channels, sizes.image_size)
    mean, std = [0.5] * sizes.in_channels, [0.25] * sizes.in_channels
    ensemble = serving_program(members, mean, std)[0].to(device)
    single = serving_program([dense], mean, std)[0].to(device)
    images = torch.rand(sizes.batch_size, *shape, device=device)

    def timed(module: nn.Module) -> Callable[[], None]:
        def forward() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                module(images)
            if cuda:
                torch.cuda.synchronize(device)

        return forward

    with torch.inference_mode():
        for _ in range(sizes.warmup):
            timed(ensemble)(), timed(single)()
        ensemble_s, dense_s = time_pair(timed(ensemble), timed(single), max(sizes.steps, 3))
    ratio = dense_s / ensemble_s
    params = sum(_parameters(m) for m in members) / (3 * _parameters(dense))
    return {
        "model": sizes.model,
        "members": 3,
        "channel_sparsity": GPU_CHANNEL_SPARSITY,
        "batch_size": sizes.batch_size,
        "bf16": cuda,
        "dense_images_per_s": sizes.batch_size / dense_s,
        "ensemble_images_per_s": sizes.batch_size / ensemble_s,
        "ensemble_vs_dense": ratio,
        "member_parameters_vs_dense": params,
        "passed": True,
        "goals": {f"3 slim members >= {GPU_GOAL} x one dense model's images/s": ratio >= GPU_GOAL},
        "summary": (
            f"dense {sizes.batch_size / dense_s:.0f} img/s, 3 slim members "
            f"{sizes.batch_size / ensemble_s:.0f} img/s (x{ratio:.2f}; members "
            f"{params:.2f}x the dense parameters)"
        ),
    }


def train_step_times(ticket_path: str | Path, batch_size: int, repeats: int = 7) -> dict:
    """One SGD training step (forward, backward, update) of a ticket's masked network
    against the same network with its removed channels cut out, same batch, interleaved:
    what training gains on slimmed layers once the channels are gone. A ticket cut while
    training (a shrinking run) is timed against the full architecture with its masks and
    fresh weights (a step's time does not depend on the weights' values)."""
    from ft_dist.ensemble.tickets import (
        build_architecture,
        build_member,
        load_masked,
        load_ticket,
    )
    from ft_dist.sparse.slim import full_masks, slim_model

    ticket = load_ticket(ticket_path)
    shape = ticket.input_shape()
    example = torch.zeros(1, *shape)
    removed = ticket.removed_channels()
    if removed:  # cut while training: the masked network is the full one, cut positions off
        full = build_architecture(ticket.meta, {}, ticket_path)
        masks = full_masks(full, example, removed, ticket.masks)
        masked = load_masked(full, full.state_dict(), masks, ticket_path, "the full model")
        masked.train()
    else:
        masked = build_member(ticket).train()
    slim = slim_model(build_member(ticket), ticket.masks, example).model.train()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, *shape, generator=generator)
    labels = torch.randint(0, int(ticket.meta["num_classes"]), (batch_size,), generator=generator)

    def stepper(model: nn.Module) -> Callable[[], None]:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

        return step

    masked_s, slim_s = time_pair(stepper(masked), stepper(slim), repeats)
    return {
        "batch_size": batch_size,
        "masked_step_ms": 1e3 * masked_s,
        "slim_step_ms": 1e3 * slim_s,
        "slim_vs_masked_step_time": slim_s / masked_s,
    }
