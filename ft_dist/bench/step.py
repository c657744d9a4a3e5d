"""`ft-dist bench step`: what DynamicSparsity adds to a training step.

Dense and sparse training of the same model, data and optimizer are interleaved step by step
in one process (alternating which goes first), so machine noise hits both alike; the ratio of
median step times is the figure of merit. The cost of one mask update (prune + grow +
optimizer-state reset + consistency check) is reported in units of a training step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "step",
        help="dense vs DynamicSparsity step time, and the cost of one mask update",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="wrn-16-4", help="model name (default: wrn-16-4)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--sparse-init", default="erk", choices=["erk", "er", "uniform"])
    parser.add_argument("--growth", default="gradient", choices=["gradient", "random", "momentum"])
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--updates", type=int, default=5, help="timed mask updates")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def _one_step(model, optimizer, sparsity, images, labels) -> float:
    import torch

    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    (sparsity or optimizer).step()
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict:
    import torch

    from ft_dist.models import build_model
    from ft_dist.sparse import DynamicSparsity, SparsityConfig

    def setup():
        torch.manual_seed(0)
        model = build_model(args.model, args.num_classes, args.in_channels, args.image_size)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        return model, optimizer

    dense_model, dense_opt = setup()
    sparse_model, sparse_opt = setup()
    # Regular updates are pushed past the timed window: step times are pure training steps,
    # and the update cost is timed on its own below.
    config = SparsityConfig(
        density=args.density,
        sparse_init=args.sparse_init,
        growth=args.growth,
        update_every_steps=10**9,
    )
    sparsity = DynamicSparsity(sparse_model, sparse_opt, config)
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.in_channels, args.image_size, args.image_size)
    images = torch.randn(shape, generator=generator)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator)

    dense_times, sparse_times = [], []
    for i in range(args.warmup + args.steps):
        order = [
            (dense_model, dense_opt, None, dense_times),
            (sparse_model, sparse_opt, sparsity, sparse_times),
        ]
        for model, optimizer, engine, times in order if i % 2 == 0 else reversed(order):
            elapsed = _one_step(model, optimizer, engine, images, labels)
            if i >= args.warmup:
                times.append(elapsed)

    update_times = []
    for _ in range(args.updates):
        sparse_opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(sparse_model(images), labels).backward()
        start = time.perf_counter()
        sparsity.explore(config.drop_fraction, growth=args.growth)
        update_times.append(time.perf_counter() - start)

    dense_median = statistics.median(dense_times)
    sparse_median = statistics.median(sparse_times)
    update_median = statistics.median(update_times)
    return {
        "model": args.model,
        "batch_size": args.batch_size,
        "density": args.density,
        "growth": args.growth,
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "dense_step_s": dense_median,
        "sparse_step_s": sparse_median,
        "sparse_dense_ratio": sparse_median / dense_median,
        "mask_update_s": update_median,
        "mask_update_in_steps": update_median / sparse_median,
        "global_density": sparsity.stats()["sparse/density"],
    }


def print_table(result: dict) -> None:
    rows = [
        ("dense step (median)", f"{result['dense_step_s'] * 1e3:.1f} ms"),
        ("sparse step (median)", f"{result['sparse_step_s'] * 1e3:.1f} ms"),
        ("sparse / dense", f"{result['sparse_dense_ratio']:.4f}"),
        ("one mask update", f"{result['mask_update_s'] * 1e3:.1f} ms"),
        ("mask update / sparse step", f"{result['mask_update_in_steps']:.4f}"),
    ]
    print(
        f"{result['model']}  batch {result['batch_size']}  density {result['density']} "
        f"({result['growth']} growth, {result['torch_threads']} threads, {result['steps']} steps)"
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>12}")
