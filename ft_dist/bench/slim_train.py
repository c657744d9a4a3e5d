"""`ft-dist bench train-slim`: what shrinking at removal buys the paper's EDST runs.

For each ``--model NAME:PX`` (default: WRN-28-10 at 32 px, the paper's CIFAR model, and
ResNet-50 at 224 px, its ImageNet model), at the paper's density (ERK d = 0.2): one SGD step
(momentum 0.9, forward, backward, update) of the masked network (channels removed but kept
as zeros, what `sparsity.channel_shrink: false` trains) against the same network with them
cut out (what a shrinking run trains), same batch, interleaved medians. The removal is one
uniform channel-level DST removal of ``--channel-sparsity`` by the unmasked mean magnitude
of freshly initialised weights (no training: the speed of a shape does not depend on the
values).

From the ratio r it projects the wall-clock of the paper's EDST runs (configs/
cifar10_edst.yaml, configs/imagenet_edst.yaml: t_ex, t_re, M) in units of one dense run of
t_ex + t_re epochs, assuming a masked step costs a dense step (dense kernels run the zeros)
and removal ends after ``--end-fraction`` of the exploration (the steps before it priced
masked, the ramp included):

    shrunk EDST ÷ one dense run = (e + (t_ex + M·t_re − e) · r) / (t_ex + t_re),  e = f·t_ex

and the same with r = 1 for the masked EDST run. Prints a table, or --json.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from typing import Any

from ft_dist.train.methods import CHANNEL_END_OF_EXPLORATION

# (model, image size, EDST config the projection reads t_ex, t_re and M from)
PAPER_MODELS = {
    "wrn-28-10": (32, "configs/cifar10_edst.yaml"),
    "resnet50": (224, "configs/imagenet_edst.yaml"),
}
GPU_SHRINK_GOAL = 0.8  # slim step <= 0.8 x masked step


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-slim",
        help="slim vs masked training step of the paper's models; projected EDST wall-clock",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        nargs="+",
        default=list(PAPER_MODELS),
        metavar="NAME",
        help="registered model names (default: wrn-28-10 resnet50, at 32 and 224 px)",
    )
    parser.add_argument("--density", type=float, default=0.2, help="ERK density (0.2)")
    parser.add_argument("--channel-sparsity", type=float, default=0.5, help="removed (0.5)")
    parser.add_argument("--batch-size", type=int, default=8, help="step batch (8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per network")
    parser.add_argument(
        "--end-fraction",
        type=float,
        default=CHANNEL_END_OF_EXPLORATION,
        help="removal ends after this much of t_ex (default: EDST's default end)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def masked_and_slim(
    model: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    density: float,
    channel_sparsity: float,
    device: str = "cpu",
):
    """(masked network, slim network): ERK masks at ``density`` and one uniform removal of
    ``channel_sparsity`` of the channels, kept as zeros in the first and cut out of the
    second (the engine's own cut, `DynamicSparsity.cut_channels_`)."""
    import torch

    from ft_dist.bench.slim_infer import one_removal_config
    from ft_dist.models import build_model
    from ft_dist.sparse import DynamicSparsity

    torch.manual_seed(0)
    network = build_model(model, num_classes, in_channels, image_size)
    config = one_removal_config(density, channel_sparsity)
    sparsity = DynamicSparsity(
        network, None, config, input_shape=(in_channels, image_size, image_size)
    )
    sparsity.step()  # one update: the removal
    masked = copy.deepcopy(network)
    sparsity.cut_channels_()
    return masked.to(device), network.to(device)


def step_times(
    masked, slim, batch_size: int, num_classes: int, shape: tuple, repeats: int, bf16: bool = False
) -> tuple[float, float]:
    """Median seconds of one SGD step of each network, interleaved."""
    import torch
    from torch import nn

    from ft_dist.export.timing import time_pair

    device = next(masked.parameters()).device
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, *shape, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
    cuda = device.type == "cuda"

    def stepper(model: nn.Module) -> Callable[[], None]:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(images).float(), labels)
            loss.backward()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize(device)

        return step

    return time_pair(stepper(masked), stepper(slim), repeats)


def projection(ratio: float, t_ex: int, t_re: int, members: int, end_fraction: float) -> dict:
    """EDST wall-clock ÷ one dense run of t_ex + t_re epochs, masked and shrunk (docstring)."""
    masked_epochs = end_fraction * t_ex
    total = t_ex + members * t_re
    shrunk = (masked_epochs + (total - masked_epochs) * ratio) / (t_ex + t_re)
    return {
        "t_ex": t_ex,
        "t_re": t_re,
        "members": members,
        "masked_edst_vs_dense": total / (t_ex + t_re),
        "shrunk_edst_vs_dense": shrunk,
    }


def measure(model: str, args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from ft_dist.config import load_config

    image_size, config = PAPER_MODELS.get(model, (32, None))
    num_classes = 1000 if image_size >= 224 else 10
    masked, slim = masked_and_slim(
        model, num_classes, 3, image_size, args.density, args.channel_sparsity
    )
    shape = (3, image_size, image_size)
    masked_s, slim_s = step_times(masked, slim, args.batch_size, num_classes, shape, args.repeats)
    ratio = slim_s / masked_s
    row = {
        "model": model,
        "image_size": image_size,
        "batch_size": args.batch_size,
        "masked_step_ms": 1e3 * masked_s,
        "slim_step_ms": 1e3 * slim_s,
        "slim_vs_masked_step_time": ratio,
        "slim_parameters_vs_full": sum(p.numel() for p in slim.parameters())
        / sum(p.numel() for p in masked.parameters()),
    }
    root = Path(__file__).resolve().parents[2]
    if config is not None and (root / config).is_file():
        edst = load_config(root / config).ensemble
        row["projection_config"] = config
        row |= projection(
            ratio,
            edst.edst.exploration_epochs,
            edst.edst.refinement_epochs,
            edst.num_members,
            args.end_fraction,
        )
    return row


def run(args: argparse.Namespace) -> int:
    import torch

    rows = []
    for model in args.model:
        print(f"== bench train-slim: {model}", flush=True)
        rows.append(measure(model, args))
    result = {
        "torch_threads": torch.get_num_threads(),
        "density": args.density,
        "channel_sparsity": args.channel_sparsity,
        "end_fraction": args.end_fraction,
        "rows": rows,
    }
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"slim vs masked SGD step, ERK d = {result['density']}, channel sparsity "
        f"{result['channel_sparsity']} (uniform), CPU threads {result['torch_threads']}; "
        f"EDST projected with removal ending after {result['end_fraction']} of t_ex",
        f"{'model':<12}{'px':>5}{'batch':>6}{'masked ms':>10}{'slim ms':>9}{'slim÷masked':>12}"
        f"{'params':>8}{'EDST masked÷dense':>18}{'EDST shrunk÷dense':>18}",
    ]
    for row in result["rows"]:
        masked = row.get("masked_edst_vs_dense")
        shrunk = row.get("shrunk_edst_vs_dense")
        lines.append(
            f"{row['model']:<12}{row['image_size']:>5}{row['batch_size']:>6}"
            f"{row['masked_step_ms']:>10.1f}{row['slim_step_ms']:>9.1f}"
            f"{row['slim_vs_masked_step_time']:>11.2f}x{row['slim_parameters_vs_full']:>7.2f}x"
            f"{'-' if masked is None else f'{masked:.2f}x':>18}"
            f"{'-' if shrunk is None else f'{shrunk:.2f}x':>18}"
        )
    return "\n".join(lines)


def check_train_slim(device, sizes, workdir) -> dict[str, Any]:
    """`ft-dist bench gpu` check: one training step (bf16 autocast on CUDA) of ResNet-50 at
    224 px cut by channel sparsity 0.5 (ERK d = 0.2) against the masked network, interleaved
    (the tiny size on a CPU); goal: slim <= 0.8 x masked."""
    del workdir
    cuda = device.type == "cuda"
    masked, slim = masked_and_slim(
        sizes.model, sizes.num_classes, sizes.in_channels, sizes.image_size, 0.2, 0.5, str(device)
    )
    shape = (sizes.in_channels, sizes.image_size, sizes.image_size)
    for _ in range(sizes.warmup):
        step_times(masked, slim, sizes.batch_size, sizes.num_classes, shape, 1, bf16=cuda)
    masked_s, slim_s = step_times(
        masked, slim, sizes.batch_size, sizes.num_classes, shape, max(sizes.steps, 3), bf16=cuda
    )
    ratio = slim_s / masked_s
    return {
        "model": sizes.model,
        "batch_size": sizes.batch_size,
        "bf16": cuda,
        "masked_step_ms": 1e3 * masked_s,
        "slim_step_ms": 1e3 * slim_s,
        "slim_vs_masked_step_time": ratio,
        "passed": True,
        "goals": {f"slim step <= {GPU_SHRINK_GOAL} x masked step": ratio <= GPU_SHRINK_GOAL},
        "summary": f"masked {1e3 * masked_s:.1f} ms, slim {1e3 * slim_s:.1f} ms per step (x{ratio:.2f})",
    }
