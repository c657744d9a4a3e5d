"""`ft-dist bench infer`: ensemble inference on CPU, masked dense kernels vs sparse kernels.

Masked dense: the tickets' weights as dense tensors with zeros (what `ft-dist evaluate` and
the exported program run). Sparse: every masked Linear layer holds its weight as a torch
CSR tensor and multiplies with ``torch.addmm(bias, W_csr, x^T)`` (x^T made contiguous);
convolutions stay masked dense (torch has no sparse convolution on CPU), so a whole model
gains only in its Linear layers. Both variants run interleaved in one process; medians
over repeats are compared.

1. Per layer: a square Linear (default 4096 x 4096, batch 256) at each density.
2. Whole model: an ensemble of M members (ERK masks at the density), images/s.

Channel-slim ensembles (bench/slim_infer.py), instead of the above:
  --export DIR          the exported program of DIR (by default the members packed into one
                        network) vs one dense model of its architecture, and vs the separate
                        members' program rebuilt from DIR
  --synthetic resnet50  M ResNet-50 members at 224 px cut by --channel-sparsity, exported
                        packed and separate, vs one dense ResNet-50 (no training needed)
Both print ensemble images/s / dense images/s (>= 1.0: the ensemble is as fast as one model)
at each of --batch-sizes (default 64 256 with --export, 16 with --synthetic), all programs
of a batch size timed in one interleaved loop.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="ensemble inference: masked dense vs sparse (CSR) kernels, per layer and model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--features", type=int, default=4096, help="per-layer Linear side")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="256; with --export/--synthetic, one size"
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None,
        help="--export/--synthetic: batch sizes, one row each (default 64 256; 16 synthetic)",
    )  # fmt: skip
    parser.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.1])
    parser.add_argument("--model", default="small-cnn", help="whole-model benchmark model")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--members", type=int, default=3, help="ensemble size M")
    parser.add_argument("--model-density", type=float, default=0.2, help="ERK density")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--export", metavar="DIR", help="time the exported ensemble of DIR")
    parser.add_argument("--synthetic", metavar="MODEL", help="e.g. resnet50: synthetic slim")
    parser.add_argument(
        "--channel-sparsity", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.6],
        help="--synthetic: removed channel fractions, one row each",
    )  # fmt: skip
    parser.add_argument("--synthetic-image-size", type=int, default=224)
    parser.add_argument(
        "--channel-allocation", choices=["uniform", "global"], default="uniform",
        help="--synthetic: sparsity.channel_allocation of the removal",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.export or args.synthetic:
        return run_slim(args)
    args.batch_size = args.batch_size or 256
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    with torch.inference_mode():
        layers = [
            measure_layer(args.features, args.batch_size, d, args.repeats) for d in args.densities
        ]
        model = measure_model(args)
    result = {"torch_threads": torch.get_num_threads(), "layers": layers, "model": model}
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def run_slim(args: argparse.Namespace) -> int:
    import torch

    from ft_dist.bench import slim_infer

    def sizes(default: list[int]) -> list[int]:
        if args.batch_sizes:
            return list(args.batch_sizes)
        return [args.batch_size] if args.batch_size else default

    rows = []
    if args.export:
        rows += slim_infer.measure_export_sizes(args.export, sizes([64, 256]), args.repeats)
    if args.synthetic:
        rows += slim_infer.measure_synthetic(
            args.synthetic,
            args.members,
            args.model_density,
            args.channel_sparsity,
            sizes([16]),
            args.repeats,
            image_size=args.synthetic_image_size,
            allocation=args.channel_allocation,
        )
    result = {"torch_threads": torch.get_num_threads(), "device": "cpu", "rows": rows}
    title = f"CPU inference, {result['torch_threads']} threads: slim ensemble vs one dense model"
    print(json.dumps(result, indent=2) if args.json else slim_infer.format_rows(rows, title))
    return 0


def measure_layer(features: int, batch: int, density: float, repeats: int) -> dict[str, Any]:
    import torch

    from ft_dist.bench.sparse_kernels import SparseLinear
    from ft_dist.export.timing import time_pair

    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(features, features)
    mask = torch.rand(features, features, generator=generator) < density
    with torch.no_grad():
        layer.weight.mul_(mask)
    sparse = SparseLinear.from_linear(layer)
    x = torch.randn(batch, features, generator=generator)
    max_diff = float((sparse(x) - layer(x)).abs().max())
    dense_s, sparse_s = time_pair(lambda: layer(x), lambda: sparse(x), repeats)
    return {
        "shape": [features, features],
        "batch_size": batch,
        "density": float(mask.float().mean()),
        "dense_ms": dense_s * 1e3,
        "sparse_ms": sparse_s * 1e3,
        "speedup": dense_s / sparse_s,
        "max_abs_diff": max_diff,
    }


def measure_model(args: argparse.Namespace) -> dict[str, Any]:
    """M members with ERK masks; averaged softmax, dense-masked vs sparse Linear layers."""
    import torch

    from ft_dist.bench.sparse_kernels import with_sparse_linears
    from ft_dist.export.timing import time_pair
    from ft_dist.models import build_model
    from ft_dist.sparse import DynamicSparsity, SparsityConfig

    dense_members, sparse_members, converted = [], [], []
    for member in range(args.members):
        torch.manual_seed(member)
        model = build_model(args.model, args.num_classes, args.in_channels, args.image_size)
        config = SparsityConfig(density=args.model_density, sparse_init="erk", seed=member)
        masks = DynamicSparsity(model, None, config).masks  # weights now masked in place
        model.eval()
        sparse_model, converted = with_sparse_linears(model, masks)
        dense_members.append(model)
        sparse_members.append(sparse_model)
    shape = (args.batch_size, args.in_channels, args.image_size, args.image_size)
    images = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def ensemble(members: list) -> Callable[[], torch.Tensor]:
        return lambda: torch.stack([m(images).softmax(dim=1) for m in members]).mean(dim=0)

    max_diff = float((ensemble(sparse_members)() - ensemble(dense_members)()).abs().max())
    dense_s, sparse_s = time_pair(ensemble(dense_members), ensemble(sparse_members), args.repeats)
    return {
        "model": args.model,
        "members": args.members,
        "density": args.model_density,
        "batch_size": args.batch_size,
        "sparse_layers": converted,
        "dense_images_per_s": args.batch_size / dense_s,
        "sparse_images_per_s": args.batch_size / sparse_s,
        "speedup": dense_s / sparse_s,
        "max_abs_diff": max_diff,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"CPU inference, {result['torch_threads']} threads: masked dense vs sparse (CSR) kernels",
        f"{'layer':<22}{'batch':>6}{'density':>9}{'dense ms':>10}{'sparse ms':>11}{'speedup':>9}",
    ]
    for row in result["layers"]:
        shape = "Linear {}x{}".format(*row["shape"])
        lines.append(
            f"{shape:<22}{row['batch_size']:>6}{row['density']:>9.3f}{row['dense_ms']:>10.1f}"
            f"{row['sparse_ms']:>11.1f}{row['speedup']:>8.2f}x"
        )
    model = result["model"]
    name = f"{model['model']} x{model['members']} (ERK {model['density']})"
    lines += [
        f"{'ensemble':<22}{'batch':>6}{'images/s dense':>16}{'sparse':>9}{'speedup':>9}",
        f"{name:<22}{model['batch_size']:>6}{model['dense_images_per_s']:>16.1f}"
        f"{model['sparse_images_per_s']:>9.1f}{model['speedup']:>8.2f}x",
        f"sparse (CSR) layers: {', '.join(model['sparse_layers']) or 'none'}",
    ]
    return "\n".join(lines)
