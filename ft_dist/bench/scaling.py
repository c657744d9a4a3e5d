"""`ft-dist bench scaling`: data-parallel throughput on Ray, and what consistent masks cost.

1. Images/s of the real training loop (`ft-dist train`'s path: Ray Train workers, DDP,
   DynamicSparsity, the shard stream) with 1 and then 2 workers, same model, data and
   per-worker batch (weak scaling: the global batch doubles). Images/s is the loop's own
   figure from summary.json: examples over time spent in training steps, so worker start-up,
   evaluation and checkpoints are excluded. Efficiency = images/s(2) / (2 x images/s(1)).
2. The cost of keeping every rank's masks bit-identical (SPEC §9), measured in a 2-worker
   group on a model of your choice (ResNet-50 by default, the paper's ImageNet model):
   the checksum check DynamicSparsity runs after each mask update (bytes sent, time),
   against the alternative of broadcasting rank 0's masks, and one whole mask update.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ft_dist.layout import run_dir, summary_path

# Written into RUN_DIR by `measure_consistency_for`'s loop, read back by `consistency_cost`.
CONSISTENCY_FILE = "mask_consistency.json"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scaling",
        help="images/s with 1 and 2 Ray workers (DDP), and the cost of consistent masks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", default=None, help="shards dir (default: bundled MNIST, temp)")
    parser.add_argument("--model", default="small-cnn", help="model for the throughput runs")
    parser.add_argument("--batch-size", type=int, default=64, help="per-worker batch size")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per throughput run")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument(
        "--consistency-model", default="resnet50", help="model for the mask-consistency cost"
    )
    parser.add_argument("--image-size", type=int, default=224, help="for --consistency-model")
    parser.add_argument("--num-classes", type=int, default=1000, help="for --consistency-model")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per collective")
    parser.add_argument("--out", default=None, help="run directories (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ray

    from ft_dist.train.worker import connect

    with tempfile.TemporaryDirectory(prefix="ft_dist_scaling_") as scratch:
        out = Path(args.out or scratch).resolve()
        data = Path(args.data).resolve() if args.data else write_bundled_data(out / "data")
        connect(None, log_to_driver=not args.json)
        try:
            result = {
                "throughput": [throughput(args, data, out, n) for n in (1, 2)],
                "mask_consistency": consistency_cost(args, data, out),
            }
        finally:
            ray.shutdown()
    one, two = (row["images_per_s"] for row in result["throughput"])
    result["speedup"] = two / one
    result["efficiency"] = two / (2 * one)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def write_bundled_data(root: Path) -> Path:
    from ft_dist.data.bundled import write_mnist

    write_mnist(root, ood=False, overwrite=True)
    return root


def run_config(args: argparse.Namespace, data: Path, out: Path, num_workers: int, name: str):
    """The run config of one measurement: evaluation off, one checkpoint at the end."""
    from ft_dist.config import config_from_dict

    return config_from_dict(
        {
            "model": {"name": args.model},
            "data": {
                "root": str(data),
                "batch_size_per_worker": args.batch_size,
                "loader_workers": 0,
                "val_split": None,
                "test_split": None,
                "verify": "size",
            },
            "sparsity": {"density": args.density, "update_every_steps": 25},
            "train": {
                "ticket": "last",
                "epochs": args.epochs,
                "num_workers": num_workers,
                "run_name": name,
                "output_dir": str(out),
                "checkpoint_every_epochs": args.epochs,
                "log_every_steps": 10_000,
            },
            "tracking": {"wandb": "disabled", "progress_every_s": 3600},
        },
        source="bench scaling",
    )


def throughput(args: argparse.Namespace, data: Path, out: Path, num_workers: int) -> dict:
    from ft_dist.train.worker import fit

    name = f"scaling-{num_workers}w-{time.strftime('%Y%m%d-%H%M%S')}"
    run = fit(run_config(args, data, out, num_workers, name))
    summary = json.loads(summary_path(run).read_text())
    return {
        "num_workers": num_workers,
        "global_batch": args.batch_size * num_workers,
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "images_per_s": summary["images_per_s"],
    }


def consistency_cost(args: argparse.Namespace, data: Path, out: Path) -> dict:
    """Run `measure_consistency` on 2 Ray workers; rank 0 leaves its figures in the run dir."""
    from ft_dist.train.worker import fit

    name = f"scaling-masks-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = run_config(args, data, out, 2, name)
    model = cfg.model.model_copy(
        update={
            "name": args.consistency_model,
            "num_classes": args.num_classes,
            "in_channels": 3,
            "image_size": args.image_size,
        }
    )
    cfg = cfg.model_copy(update={"model": model})
    run = fit(cfg, measure_consistency_for(args.repeats))
    return json.loads((run / CONSISTENCY_FILE).read_text())


def measure_consistency_for(repeats: int):
    def loop(cfg: Any, session: Any, tracker: Any) -> None:
        measure_consistency(cfg, session, repeats)

    return loop


def _median_ms(fn, repeats: int) -> float:
    import torch.distributed as dist

    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure_consistency(cfg: Any, session: Any, repeats: int) -> None:
    """Per-worker: identical model and masks on each rank, then time the three operations."""
    import torch

    from ft_dist.models import build_model_from_config
    from ft_dist.sparse import DynamicSparsity
    from ft_dist.sparse.consistency import broadcast_masks_

    torch.manual_seed(0)
    model = build_model_from_config(cfg.model)
    sparsity = DynamicSparsity(model, None, cfg.sparsity)
    masks = {name: sparsity.masks[name] for name in sparsity.sparse_names}
    checksum_bytes = sparsity.check_consistency()
    result = {
        "model": cfg.model.name,
        "world_size": session.world_size,
        "masked_layers": len(masks),
        "mask_elements": sum(mask.numel() for mask in masks.values()),
        "checksum_bytes_per_update": checksum_bytes,
        "checksum_ms": _median_ms(sparsity.check_consistency, repeats),
        "broadcast_bytes_per_update": sum(mask.numel() for mask in masks.values()),
        "broadcast_ms": _median_ms(lambda: broadcast_masks_(masks), repeats),
        "update_ms": _median_ms(
            lambda: sparsity.explore(cfg.sparsity.drop_fraction, "random"), repeats
        ),
    }
    result["checksum_share_of_update"] = result["checksum_ms"] / result["update_ms"]
    if session.rank == 0:
        run = run_dir(cfg.train)
        run.mkdir(parents=True, exist_ok=True)
        (run / CONSISTENCY_FILE).write_text(json.dumps(result, indent=2) + "\n")


def format_table(result: dict) -> str:
    lines = ["Data-parallel throughput (Ray Train, DDP, same per-worker batch)"]
    lines.append(f"{'workers':>8} {'global batch':>13} {'steps':>6} {'images/s':>10}")
    for row in result["throughput"]:
        lines.append(
            f"{row['num_workers']:>8} {row['global_batch']:>13} {row['steps']:>6} "
            f"{row['images_per_s']:>10.1f}"
        )
    lines.append(f"speedup {result['speedup']:.2f}x, efficiency {100 * result['efficiency']:.0f}%")
    masks = result["mask_consistency"]
    lines.append("")
    lines.append(
        f"Keeping masks consistent ({masks['model']}, {masks['masked_layers']} masked layers, "
        f"{masks['mask_elements']:,} mask elements, {masks['world_size']} ranks)"
    )
    lines.append(f"{'method':<34} {'bytes/update':>13} {'ms/update':>10}")
    lines.append(
        f"{'checksum all-reduce (ft_dist)':<34} {masks['checksum_bytes_per_update']:>13,} "
        f"{masks['checksum_ms']:>10.2f}"
    )
    lines.append(
        f"{'broadcast rank 0 masks (uint8)':<34} {masks['broadcast_bytes_per_update']:>13,} "
        f"{masks['broadcast_ms']:>10.2f}"
    )
    lines.append(
        f"one mask update (prune+grow+check): {masks['update_ms']:.1f} ms; the check is "
        f"{100 * masks['checksum_share_of_update']:.1f}% of it"
    )
    return "\n".join(lines)
