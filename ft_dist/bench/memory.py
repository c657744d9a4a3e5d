"""`ft-dist bench memory`: what one rank holds under DDP, DeepSpeed ZeRO-2 and FSDP2.

For each model and strategy, N gloo ranks (CPU processes, one thread each) build the
strategy as the training loop does (`build_strategy`, DST at density 0.2, gradient growth),
take warm-up steps so that the optimizer state exists, and at the peak of the next step
(after backward, before the optimizer step: gradients and optimizer state both alive)
count the bytes of every tensor the process holds. Tensors are counted by storage: views
and a DTensor's wrapper count once, a shard counts its own (padded) storage. Categories:

  parameters   the module's parameters as this rank holds them (FSDP2: its shards)
  gradients    their ``.grad`` (FSDP2: the reduce-scattered shard)
  optimizer    the torch optimizer's state; DeepSpeed: also its fp32 master partitions and
               their gradients (ZeRO's accounting: masters are optimizer state)
  dst          the DST engine's tensors: masks, float masks, ever-active masks, EMAs
  other        every other tensor alive (DeepSpeed's gradient buckets and partitions,
               FSDP2's all-gather buffers, the batch, ...)

``total`` is all of them, the figure the goal compares: the largest rank's total ÷ DDP's
(goal for fsdp2 at 2 ranks: <= 0.55). Only tensors Python can reach are counted: DDP's
gradient buckets live in C++ (one more gradient-sized copy per rank), so DDP's real
footprint is larger than shown and the ratios err against FSDP2. Step time (median of the
timed steps, rank 0, after a barrier) ÷ DDP's is information: on a shared CPU box the
collectives dominate and the numbers move between runs. All of it takes about 8 minutes on
a busy 2-core box (ViT-S/16 at 224 px is most of it): ``--models wrn-28-10`` for one model.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CATEGORIES = ("parameters", "gradients", "optimizer", "dst", "other")
GOAL_RATIO = 0.55  # fsdp2 bytes per rank <= 0.55 x DDP's


@dataclass(frozen=True)
class ModelCase:
    """One benchmarked model, at its usual input size and optimizer."""

    name: str  # model.name for `build_model`
    image_size: int
    num_classes: int
    optimizer: str


MODELS = {
    "vit-s/16": ModelCase("timm:vit_small_patch16_224", 224, 1000, "adamw"),
    "wrn-28-10": ModelCase("wrn-28-10", 32, 100, "sgd"),
}
# Each strategy at its measured setting (DeepSpeed: ZeRO stage 2).
STRATEGY_CASES = {
    "ddp": {"strategy": "ddp"},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2},
    "fsdp2": {"strategy": "fsdp2"},
}


@dataclass(frozen=True)
class Setup:
    model: str
    strategy: str
    world_size: int
    batch_size: int
    steps: int
    warmup: int
    density: float


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "memory",
        help="per-rank bytes of parameters, gradients, optimizer and DST state: DDP, ZeRO-2, FSDP2",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        choices=list(MODELS),
        help="default: %(default)s",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=list(STRATEGY_CASES),
        choices=list(STRATEGY_CASES),
        help="default: %(default)s (ddp is always measured: the ratios are to it)",
    )
    parser.add_argument("--world-size", type=int, default=2, help="gloo ranks (default: 2)")
    parser.add_argument("--batch-size", type=int, default=2, help="per rank (default: 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--density", type=float, default=0.2, help="default: 0.2")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.world_size < 2 or args.steps < 1 or args.batch_size < 1 or args.warmup < 1:
        raise ValueError(
            "ft-dist bench memory needs --world-size >= 2 and --steps, --batch-size, "
            "--warmup >= 1 (warm-up creates the optimizer state that is counted)"
        )
    strategies = ["ddp", *[s for s in args.strategies if s != "ddp"]]
    rows = []
    for model in args.models:
        for strategy in strategies:
            setup = Setup(
                model, strategy, args.world_size, args.batch_size, args.steps, args.warmup,
                args.density,
            )  # fmt: skip
            rows.append(measure(setup))
    result = summarise(rows)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


# ---------------------------------------------------------------------- arithmetic
def storage_bytes(tensors) -> dict[int, int]:
    """Bytes per distinct storage (keyed by its address) of ``tensors``: views of one
    storage count once, a DTensor counts its local shard, tensors without real storage
    (meta, wrapper subclasses) count nothing."""
    from torch.distributed.tensor import DTensor

    found: dict[int, int] = {}
    for tensor in tensors:
        if isinstance(tensor, DTensor):
            tensor = tensor.to_local()
        if tensor.device.type == "meta":
            continue
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # a wrapper subclass: no storage
            continue
        if storage.nbytes():
            found[storage.data_ptr()] = storage.nbytes()
    return found


def categorise(known: dict[str, list], alive: list) -> dict[str, int]:
    """Bytes per category: each storage goes to the first category (in CATEGORIES order)
    that holds it, and what is ``alive`` in no category is ``other``."""
    seen: set[int] = set()
    result: dict[str, int] = {}
    for category in CATEGORIES[:-1]:
        storages = storage_bytes(known.get(category, []))
        result[category] = sum(b for ptr, b in storages.items() if ptr not in seen)
        seen |= storages.keys()
    result["other"] = sum(b for ptr, b in storage_bytes(alive).items() if ptr not in seen)
    result["total"] = sum(result[c] for c in CATEGORIES)
    return result


def summarise(rows: list[dict]) -> dict:
    """Per model: every strategy's largest-rank bytes and step time as ratios to DDP's."""
    for row in rows:
        ddp = next(r for r in rows if r["model"] == row["model"] and r["strategy"] == "ddp")
        row["bytes_vs_ddp"] = row["max_rank"]["total"] / ddp["max_rank"]["total"]
        row["step_time_vs_ddp"] = row["step_seconds"] / ddp["step_seconds"]
    fsdp2 = [r for r in rows if r["strategy"] == "fsdp2"]
    return {
        "rows": rows,
        "goal": f"fsdp2 bytes per rank <= {GOAL_RATIO} x DDP",
        "goal_met": bool(fsdp2) and all(r["bytes_vs_ddp"] <= GOAL_RATIO for r in fsdp2),
    }


def largest_rank(per_rank: list[dict[str, int]]) -> dict[str, int]:
    """The rank with the largest total (uneven shards: usually rank 0)."""
    return max(per_rank, key=lambda counts: counts["total"])


# ---------------------------------------------------------------------- processes
def measure(setup: Setup) -> dict:
    """Run ``setup`` on ``world_size`` fresh gloo processes; their figures, gathered."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="ft_dist_bench_memory_") as scratch:
        out = Path(scratch)
        mp.spawn(_rank_main, args=(setup, _free_port(), out), nprocs=setup.world_size)
        per_rank = [
            json.loads((out / f"rank_{r}.json").read_text()) for r in range(setup.world_size)
        ]
    return {
        **asdict(setup),
        "model_name": MODELS[setup.model].name,
        "optimizer": MODELS[setup.model].optimizer,
        "per_rank": [r["bytes"] for r in per_rank],
        "max_rank": largest_rank([r["bytes"] for r in per_rank]),
        "step_seconds": per_rank[0]["step_seconds"],
        "num_parameters": per_rank[0]["num_parameters"],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, setup: Setup, port: int, out: Path) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(setup.world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )  # fmt: skip
    torch.set_num_threads(1)
    # The parent's stdout carries only the table or the JSON: libraries' log lines here
    # (DeepSpeed prints to stdout) go to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    dist.init_process_group("gloo", rank=rank, world_size=setup.world_size)
    result = measure_rank(setup, rank)
    (out / f"rank_{rank}.json").write_text(json.dumps(result))
    gc.collect()  # free DDP reducers and pending work while the group is alive
    dist.barrier()
    dist.destroy_process_group()
    # End here: interpreter teardown with live gloo objects can abort a finished process.
    sys.stdout.flush()
    os._exit(0)


def measure_rank(setup: Setup, rank: int) -> dict[str, Any]:
    """This rank: build, warm up, count at the peak of a step, then time the steps."""
    import torch
    import torch.distributed as dist

    strategy = _build(setup)
    case = MODELS[setup.model]
    generator = torch.Generator().manual_seed(rank)
    shape = (setup.batch_size, 3, case.image_size, case.image_size)

    def step(count: bool = False) -> dict[str, int] | None:
        images = torch.randn(shape, generator=generator)
        labels = torch.randint(0, case.num_classes, (setup.batch_size,), generator=generator)
        strategy.begin_step()
        with strategy.micro_batch(True):
            loss = torch.nn.functional.cross_entropy(strategy.model(images).float(), labels)
            strategy.backward(loss, True)
        del loss  # the graph is freed by backward; the scalar is not state
        counted = count_state(strategy) if count else None
        strategy.step()
        return counted

    for _ in range(setup.warmup):
        step()
    counts = step(count=True)
    times = []
    for _ in range(setup.steps):
        dist.barrier()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "bytes": counts,
        "step_seconds": statistics.median(times),
        "num_parameters": sum(p.numel() for p in strategy.sparsity.params.values()),
    }


def _build(setup: Setup):
    import torch

    from ft_dist.models import build_model
    from ft_dist.sparse import SparsityConfig
    from ft_dist.train.config import OptimConfig, TrainConfig
    from ft_dist.train.optimizers import optimizer_entry
    from ft_dist.train.strategies.base import build_strategy

    case = MODELS[setup.model]
    torch.manual_seed(0)
    module = build_model(case.name, case.num_classes, 3, case.image_size)
    optim = OptimConfig(name=case.optimizer, **optimizer_entry(case.optimizer).typical)
    sparsity = SparsityConfig(
        density=setup.density, growth="gradient", update_every_steps=10**9
    )  # masks and their state as in training; no update inside the timed window
    return build_strategy(
        module,
        train=TrainConfig(**STRATEGY_CASES[setup.strategy]),
        optim=optim,
        sparsity=sparsity,
        micro_batch_size=setup.batch_size,
        device=torch.device("cpu"),
        world_size=setup.world_size,
    )


def count_state(strategy) -> dict[str, int]:
    """This process's tensor bytes by category (see the module docstring)."""
    import torch

    params = list(strategy.module.parameters())
    optimizers = [getattr(strategy, "optimizer", None)]
    if hasattr(strategy, "base_optimizer"):  # DeepSpeed: the torch optimizer on the masters
        optimizers = [strategy.base_optimizer]
    optimizer_tensors = []
    for optimizer in optimizers:
        if optimizer is None:
            continue
        for group in optimizer.param_groups:
            masters = [p for p in group["params"] if all(p is not q for q in params)]
            optimizer_tensors += masters + [p.grad for p in masters if p.grad is not None]
        for state in optimizer.state.values():
            optimizer_tensors += [v for v in state.values() if torch.is_tensor(v)]
    known = {
        "parameters": params,
        "gradients": [p.grad for p in params if p.grad is not None],
        "optimizer": optimizer_tensors,
        "dst": engine_tensors(strategy.sparsity),
    }
    gc.collect()
    # type(), not isinstance(): isinstance reads ``__class__``, which deprecated module
    # attributes among the objects answer with a warning
    alive = [obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)]
    return categorise(known, alive)


def engine_tensors(sparsity) -> list:
    """Every tensor the DST engine keeps of its own: its attributes' tensors, in dicts or
    dicts of dicts (masks, float masks, ever-active masks, EMAs), not the parameters."""
    import torch

    found = []
    for name, value in vars(sparsity).items():
        if name == "params" or not isinstance(value, dict):
            continue
        for item in value.values():
            inner = item.values() if isinstance(item, dict) else [item]
            found += [t for t in inner if torch.is_tensor(t)]
    return found


# ---------------------------------------------------------------------- output
def format_table(result: dict) -> str:
    mib = 2**20
    rows = result["rows"]
    first = rows[0]
    lines = [
        f"Per-rank bytes at the peak of a step (largest of {first['world_size']} gloo ranks, "
        f"MiB), DST density {first['density']}, batch {first['batch_size']} per rank",
        f"{'model':<10} {'strategy':<9} "
        + " ".join(f"{c:>10}" for c in (*CATEGORIES, "total"))
        + f" {'x DDP':>7} {'step s':>8} {'time x DDP':>11}",
    ]
    for row in rows:
        counts = row["max_rank"]
        lines.append(
            f"{row['model']:<10} {row['strategy']:<9} "
            + " ".join(f"{counts[c] / mib:>10.1f}" for c in (*CATEGORIES, "total"))
            + f" {row['bytes_vs_ddp']:>7.3f} {row['step_seconds']:>8.2f}"
            f" {row['step_time_vs_ddp']:>11.2f}"
        )
    verdict = "met" if result["goal_met"] else "NOT met"
    lines.append(f"goal: {result['goal']}: {verdict}")
    return "\n".join(lines)
