"""`ft-dist bench step`: what DynamicSparsity adds to a training step.

Dense and sparse training of the same model, data and optimizer are interleaved step by step
in one process (alternating which goes first), so machine noise hits both alike; the ratio of
median step times is the figure of merit. The cost of one mask update (prune + grow +
optimizer-state reset + consistency check) is reported in units of a training step.

With --compile both models are compiled (``model.compile()``, mode default) and the
mask updates are followed by training steps: every graph Dynamo compiles after the warm-up
is counted as a recompile (goal: 0; see ft_dist/bench/compile.py for how it is counted).
`ft-dist bench gpu` runs the same measurement on a GPU (ResNet-50, bf16, channels_last).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ft_dist.sparse.scores import DROP_SCORES, GROWTH_SCORES
from ft_dist.train.optimizers import OPTIMIZERS


@dataclass(frozen=True)
class StepSetup:
    """One dense-vs-sparse step measurement."""

    model: str = "wrn-16-4"
    batch_size: int = 64
    density: float = 0.2
    sparse_init: str = "erk"
    growth: str = "gradient"
    drop: str = "magnitude"
    model_kwargs: dict = field(default_factory=dict)
    optimizer: str = "sgd"
    num_classes: int = 10
    image_size: int = 32
    in_channels: int = 3
    steps: int = 30
    warmup: int = 3
    updates: int = 5
    device: str = "cpu"
    bf16: bool = False  # autocast (CUDA)
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StepSetup:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


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
    parser.add_argument("--growth", default="gradient", choices=sorted(GROWTH_SCORES))
    parser.add_argument("--drop", default="magnitude", choices=sorted(DROP_SCORES))
    parser.add_argument(
        "--model-kwargs",
        type=_mapping,
        default={},
        metavar="YAML",
        help="builder keywords, e.g. '{patch_size: 7, depth: 4}' for a timm ViT",
    )
    parser.add_argument(
        "--optimizer", default="sgd", choices=list(OPTIMIZERS), help="default: %(default)s"
    )
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--updates", type=int, default=5, help="timed mask updates")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last tensors")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile both models; count recompiles"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _mapping(text: str) -> dict:
    import yaml

    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a YAML mapping such as '{{depth: 4}}', got {text!r}"
        )
    return value


def run(args: argparse.Namespace) -> int:
    result = measure(StepSetup.from_args(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


class _Trainer:
    """One model's training step, timed (synchronising the GPU before reading the clock)."""

    def __init__(self, model, optimizer, sparsity, setup: StepSetup, device) -> None:
        self.model, self.optimizer, self.sparsity = model, optimizer, sparsity
        self.device, self.bf16 = device, setup.bf16

    def backward(self, images, labels) -> None:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(images)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()

    def step(self, images, labels) -> float:
        start = time.perf_counter()
        self.backward(images, labels)
        (self.sparsity or self.optimizer).step()
        self.sync()
        return time.perf_counter() - start

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _build(setup: StepSetup, device, sparse: bool) -> _Trainer:
    import torch

    from ft_dist.bench.compile import compile_model_
    from ft_dist.models import build_model
    from ft_dist.sparse import DynamicSparsity, SparsityConfig
    from ft_dist.train.config import OptimConfig
    from ft_dist.train.optim import build_optimizer
    from ft_dist.train.optimizers import optimizer_entry

    torch.manual_seed(0)
    model = build_model(
        setup.model, setup.num_classes, setup.in_channels, setup.image_size, setup.model_kwargs
    )
    model = model.to(device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The optimizer's typical settings (SGD: lr 0.1, momentum 0.9, weight decay 5e-4).
    settings = OptimConfig(name=setup.optimizer, **optimizer_entry(setup.optimizer).typical)
    optimizer = build_optimizer(settings, model.parameters())
    sparsity = None
    if sparse:
        # Regular updates are pushed past the timed window: step times are pure training
        # steps, and the update cost is timed on its own.
        config = SparsityConfig(
            density=setup.density,
            sparse_init=setup.sparse_init,
            growth=setup.growth,
            drop=setup.drop,
            update_every_steps=10**9,
        )
        sparsity = DynamicSparsity(model, optimizer, config)
    if setup.compile:
        compile_model_(model)
    return _Trainer(model, optimizer, sparsity, setup, device)


def measure(setup: StepSetup) -> dict[str, Any]:
    """Interleaved dense/sparse steps, then timed mask updates, each followed by a step."""
    import torch

    from ft_dist.bench.compile import count_compiles

    device = torch.device(setup.device)
    dense, sparse = _build(setup, device, False), _build(setup, device, True)
    generator = torch.Generator().manual_seed(0)
    shape = (setup.batch_size, setup.in_channels, setup.image_size, setup.image_size)
    images = torch.randn(shape, generator=generator).to(device)
    if setup.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, setup.num_classes, (setup.batch_size,), generator=generator)
    labels = labels.to(device)
    # Compiling takes the first step or two (forward, then backward): keep them untimed.
    warmup = max(setup.warmup, 2) if setup.compile else setup.warmup
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for i in range(warmup):
        for trainer in (dense, sparse) if i % 2 == 0 else (sparse, dense):
            trainer.step(images, labels)
    with count_compiles() as recompiles:
        for i in range(setup.steps):
            order = [("dense", dense), ("sparse", sparse)]
            for name, trainer in order if i % 2 == 0 else reversed(order):
                times[name].append(trainer.step(images, labels))
        update_times = _time_updates(sparse, setup, images, labels)
    return _result(setup, device, times, update_times, sparse, recompiles.graphs)


def _time_updates(trainer: _Trainer, setup: StepSetup, images, labels) -> list[float]:
    """One explore() per round (timed), then a training step on the changed masks."""
    sparsity, update_times = trainer.sparsity, []
    for _ in range(setup.updates):
        trainer.backward(images, labels)
        trainer.sync()
        start = time.perf_counter()
        sparsity.explore(sparsity.config.drop_fraction, growth=setup.growth)
        trainer.sync()
        update_times.append(time.perf_counter() - start)
        trainer.step(images, labels)
    return update_times


def check_invariants(sparsity) -> dict[str, Any]:
    """Inactive weights and their optimizer state exactly 0, exact per-layer counts."""
    import torch

    from ft_dist.bench.compile import inactive_nonzero

    masks = {n: sparsity.masks[n] for n in sparsity.sparse_names}
    state_nonzero = 0
    optimizer_state = {} if sparsity.optimizer is None else sparsity.optimizer.state
    for name, mask in masks.items():
        param = sparsity.params[name]
        for value in optimizer_state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:  # momentum, moments
                state_nonzero += int(torch.count_nonzero(value[~mask]))
    wrong_counts = [n for n, m in masks.items() if int(m.sum()) != sparsity.num_active[n]]
    return {
        "inactive_nonzero_weights": inactive_nonzero(sparsity.params, masks),
        "inactive_nonzero_optimizer_state": state_nonzero,
        "layers_with_wrong_counts": wrong_counts,
    }


def _result(setup, device, times, update_times, sparse: _Trainer, recompiles: int) -> dict:
    import torch

    dense_median = statistics.median(times["dense"])
    sparse_median = statistics.median(times["sparse"])
    update_median = statistics.median(update_times) if update_times else float("nan")
    invariants = check_invariants(sparse.sparsity)
    return {
        **asdict(setup),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "dense_step_s": dense_median,
        "sparse_step_s": sparse_median,
        "sparse_dense_ratio": sparse_median / dense_median,
        "dense_images_per_s": setup.batch_size / dense_median,
        "sparse_images_per_s": setup.batch_size / sparse_median,
        "mask_update_s": update_median,
        "mask_update_in_steps": update_median / sparse_median,
        "global_density": sparse.sparsity.stats()["sparse/density"],
        "recompiles": recompiles if setup.compile else None,
        "invariants": invariants,
        "invariants_hold": not invariants["inactive_nonzero_weights"]
        and not invariants["inactive_nonzero_optimizer_state"]
        and not invariants["layers_with_wrong_counts"],
    }


def print_table(result: dict) -> None:
    rows = [
        ("dense step (median)", f"{result['dense_step_s'] * 1e3:.1f} ms"),
        ("sparse step (median)", f"{result['sparse_step_s'] * 1e3:.1f} ms"),
        ("sparse / dense", f"{result['sparse_dense_ratio']:.4f}"),
        ("dense images/s", f"{result['dense_images_per_s']:.1f}"),
        ("sparse images/s", f"{result['sparse_images_per_s']:.1f}"),
        ("one mask update", f"{result['mask_update_s'] * 1e3:.1f} ms"),
        ("mask update / sparse step", f"{result['mask_update_in_steps']:.4f}"),
    ]
    if result["compile"]:
        rows.append((f"recompiles ({result['updates']} updates)", str(result["recompiles"])))
    rows.append(("invariants hold", "yes" if result["invariants_hold"] else "NO"))
    flags = [name for name in ("bf16", "channels_last", "compile") if result[name]]
    print(
        f"{result['model']}  batch {result['batch_size']}  density {result['density']} "
        f"({result['growth']} growth, {result['device']}, {result['torch_threads']} threads, "
        f"{result['steps']} steps{', ' + ', '.join(flags) if flags else ''})"
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>12}")
