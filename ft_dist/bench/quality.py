"""`ft-dist bench quality`: does DST beat its own static mask, on every model family?

Trains each (family, method, density, seed) for real, one process on this machine, with the
same loop `ft-dist train` runs in every worker (train/loop.py, a local session, no Ray), on
the bundled MNIST digits (written once as shards under ``--data``), and prints per family,
method and density the test accuracy as mean ± std over the seeds, and `grown_kept_run`: the
share of the grown weights that survived the next update with their value (sparse/dynamic.py
`survival_stats`; 1.0 by construction under a grace period, which exempts them).

The families (`FAMILIES`) are those the tests use: the small CNN (SGD), the demo ViT
(configs/demo_vit_dst.yaml's timm model, AdamW), a user's patch transformer given as
`file.py:build` (bench/patch_transformer.py, AdamW lr 2e-3: issue 29's failing recipe) and
a timm CNN (resnet18, SGD). Every method (`METHODS`) is configs/demo_dst.yaml's DST
(ΔT = 25 steps, about one update per epoch at batch 128, drop fraction 0.5, constant)
with one change, so rows differ in one thing only. The goal it checks: the default DST
>= static - 0.01 on every family and within 0.03 of dense on the demo ViT.

The budget is small by default so that it runs on a laptop CPU; the figures of the README
come from the command printed with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PATCH_TRANSFORMER = Path(__file__).with_name("patch_transformer.py")


@dataclass(frozen=True)
class Family:
    summary: str
    model: dict[str, Any]
    optim: dict[str, Any]


@dataclass(frozen=True)
class Method:
    summary: str
    sparsity: dict[str, Any] = field(default_factory=dict)
    dense: bool = False


FAMILIES: dict[str, Family] = {
    "small-cnn": Family(
        "ft_dist's small CNN, SGD (configs/demo_dst.yaml)",
        {"name": "small-cnn"},
        {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    ),
    "demo-vit": Family(
        "timm vit_tiny, 4 blocks, 7x7 patches, AdamW 1e-3 (configs/demo_vit_dst.yaml)",
        {"name": "timm:vit_tiny_patch16_224", "kwargs": {"patch_size": 7, "depth": 4}},
        {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "no_decay": "norm"},
    ),
    "patch-transformer": Family(
        "a user's file.py:build, 2 blocks of nn.MultiheadAttention, dim 64, AdamW 2e-3",
        {"name": f"{PATCH_TRANSFORMER}:build"},
        {"name": "adamw", "lr": 2e-3, "weight_decay": 0.05, "no_decay": "norm"},
    ),
    "timm-cnn": Family(
        "timm resnet18, SGD",
        {"name": "timm:resnet18"},
        {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    ),
}

METHODS: dict[str, Method] = {
    "dense": Method("no mask", dense=True),
    "static": Method("the initial ERK mask, never updated", {"update": "none"}),
    "set": Method("random growth, magnitude drop", {"growth": "random"}),
    "rigl": Method("gradient growth, magnitude drop (configs/demo_dst.yaml)", {}),
    "set-f0.1": Method("SET at drop fraction 0.1", {"growth": "random", "drop_fraction": 0.1}),
    "mest": Method("random growth, MEST drop |w| + λ|g|", {"growth": "random", "drop": "mest"}),
    "rigl-mest": Method("gradient growth, MEST drop", {"drop": "mest"}),
    "rigl-grace": Method("gradient growth, grown weights exempt once", {"drop": "magnitude-grace"}),
    "set-grace": Method(
        "random growth, grown weights exempt once",
        {"growth": "random", "drop": "magnitude-grace"},
    ),
    "rigl-balanced": Method("gradient growth, per output unit", {"growth": "gradient-balanced"}),
    "set-balanced": Method("random growth, per output unit", {"growth": "random-balanced"}),
}

DEFAULT_METHODS = ["dense", "static", "set", "rigl", "set-f0.1", "mest", "rigl-grace"]
# The DST of configs/demo_dst.yaml that every method changes in one key.
BASE_SPARSITY = {
    "sparse_init": "erk",
    "growth": "gradient",
    "update_every_steps": 25,
    "drop_fraction": 0.5,
    "drop_schedule": "constant",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quality",
        help="test accuracy of dense, static and DST criteria per model family (trained)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--families",
        nargs="+",
        default=list(FAMILIES),
        choices=list(FAMILIES),
        help="model families (default: all; timm ones need timm installed)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        choices=list(METHODS),
        help=f"methods (default: {' '.join(DEFAULT_METHODS)}); "
        + "; ".join(f"{name}: {m.summary}" for name, m in METHODS.items()),
    )
    parser.add_argument(
        "--densities", nargs="+", type=float, default=[0.2, 0.5], help="(default 0.2 0.5)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (default 8)")
    parser.add_argument(
        "--batch-size", type=int, default=128, help="batch of the one process (default 128)"
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="MNIST shards (`ft-dist shards mnist`); default: the bundled digits written to "
        "a temporary directory",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run_config(
    family: str,
    method: str,
    density: float,
    seed: int,
    *,
    data: str,
    out: str,
    epochs: int,
    batch_size: int,
) -> Any:
    """The validated RunConfig of one cell of the table."""
    from ft_dist.config import config_from_dict

    fam, meth = FAMILIES[family], METHODS[method]
    sparsity = {**BASE_SPARSITY, **meth.sparsity, "density": 1.0 if meth.dense else density}
    if meth.dense:
        sparsity = {"density": 1.0}
    return config_from_dict(
        {
            "model": fam.model,
            "data": {"root": data, "batch_size_per_worker": batch_size, "loader_workers": 0},
            "sparsity": {**sparsity, "seed": seed},
            "optim": {**fam.optim, "warmup_epochs": 1, "schedule": "cosine"},
            "train": {
                "epochs": epochs,
                "seed": seed,
                "output_dir": out,
                "run_name": f"{family}-{method}-{density:g}-{seed}",
                "checkpoint_every_epochs": epochs,
                "keep_checkpoints": 1,
                "log_every_steps": 1000,
            },
            "tracking": {"wandb": "disabled"},
        }
    )


def train_once(cfg: Any) -> dict[str, Any]:
    """Train ``cfg`` in this process on the CPU; its summary (summary.json's content)."""
    from ft_dist.layout import run_dir
    from ft_dist.tracking import NullTracker
    from ft_dist.train.loop import train
    from ft_dist.train.session import LocalSession

    with LocalSession(run_dir(cfg.train), device="cpu") as session:
        return train(cfg, session, NullTracker())


def bundled_shards(root: Path) -> str:
    """The bundled digits as shards under ``root`` (`ft-dist shards mnist`)."""
    from ft_dist.data.bundled import write_mnist

    write_mnist(root)
    return str(root)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ft-dist-quality-") as scratch:
        data = args.data or bundled_shards(Path(scratch) / "mnist")
        cells = measure(args, data, str(Path(scratch) / "runs"))
    result = {
        "epochs": args.epochs,
        "seeds": args.seeds,
        "batch_size": args.batch_size,
        "rows": cells,
        "goal": goal_check(cells),
    }
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def measure(args: argparse.Namespace, data: str, out: str) -> list[dict[str, Any]]:
    rows = []
    for family in args.families:
        for density in args.densities:
            for method in args.methods:
                if METHODS[method].dense and density != args.densities[0]:
                    continue  # dense does not depend on the density: one row per family
                runs = []
                for seed in range(args.seeds):
                    cfg = run_config(
                        family, method, density, seed,
                        data=data, out=out, epochs=args.epochs, batch_size=args.batch_size,
                    )  # fmt: skip
                    start = time.perf_counter()
                    summary = train_once(cfg)
                    runs.append((summary, time.perf_counter() - start))
                rows.append(summarise(family, method, density, runs))
                print(format_row(rows[-1]), file=sys.stderr, flush=True)  # progress
    return rows


def summarise(family: str, method: str, density: float, runs: list) -> dict[str, Any]:
    accuracy = [s["metrics"]["test/accuracy"] for s, _ in runs]
    kept = [s["sparse/grown_kept_run"] for s, _ in runs if "sparse/grown_kept_run" in s]
    effective = [s["sparse/effective_density"] for s, _ in runs if "sparse/effective_density" in s]
    return {
        "family": family,
        "method": method,
        "density": 1.0 if METHODS[method].dense else density,
        "accuracy": accuracy,
        "mean": statistics.fmean(accuracy),
        "std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
        "grown_kept": statistics.fmean(kept) if kept else None,
        "effective_density": statistics.fmean(effective) if effective else None,
        "seconds": sum(t for _, t in runs),
    }


def goal_check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family and density: rigl (configs/demo_dst.yaml's DST, the default users start
    from) against static - 0.01, and on the demo ViT against dense - 0.03."""
    found = {(r["family"], r["method"], r["density"]): r["mean"] for r in rows}
    checks = []
    for family, method, density in found:
        if method != "rigl":
            continue
        static = found.get((family, "static", density))
        dense = found.get((family, "dense", 1.0))
        check = {"family": family, "density": density, "dst": found[(family, method, density)]}
        if static is not None:
            check["meets_static"] = check["dst"] >= static - 0.01
        if family == "demo-vit" and dense is not None:
            check["meets_dense"] = check["dst"] >= dense - 0.03
        checks.append(check)
    return checks


def format_row(row: dict[str, Any]) -> str:
    kept = "-" if row["grown_kept"] is None else f"{row['grown_kept']:.3f}"
    eff = "-" if row["effective_density"] is None else f"{row['effective_density']:.3f}"
    return (
        f"{row['family']:<18} {row['density']:>4g} {row['method']:<14} "
        f"{row['mean']:>7.3f} ± {row['std']:.3f} {kept:>10} {eff:>7} {row['seconds']:>6.0f}"
    )


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"test accuracy, mean ± std over {result['seeds']} seed(s), {result['epochs']} epochs, "
        f"batch {result['batch_size']}, one CPU process",
        f"{'family':<18} {'d':>4} {'method':<14} {'accuracy':>15} {'grown_kept':>10} "
        f"{'eff. d':>7} {'s':>6}",
    ]
    lines += [format_row(row) for row in result["rows"]]
    for check in result["goal"]:
        verdicts = [
            f"{key.removeprefix('meets_')} {'met' if ok else 'MISSED'}"
            for key, ok in check.items()
            if key.startswith("meets_")
        ]
        lines.append(
            f"goal {check['family']} d={check['density']:g}: rigl {check['dst']:.3f}: "
            + ", ".join(verdicts or ["no reference row"])
        )
    return "\n".join(lines)
