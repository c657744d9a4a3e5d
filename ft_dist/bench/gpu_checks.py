"""The checks of `ft-dist bench gpu`, each runnable alone in a fresh process.

    python -m ft_dist.bench.gpu_checks NAME --device cuda --size full --workdir DIR --result F

Each check is a function ``(device, sizes, workdir) -> dict`` with ``passed`` (it ran and
its invariants hold), ``goals`` (performance targets, {name: met}), ``summary`` (one line
for the table) and its figures. The `ft-dist bench gpu` driver runs every check in its own
process with its own time limit, so a hang, a crash or a poisoned CUDA context in one check
cannot stop or skew the others. Every check also runs on the CPU (``--device cpu --size
tiny``), which is how the tests cover them on machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SPARSE_VS_DENSE_GOAL = 0.95  # sparse images/s >= 0.95 x dense images/s


@dataclass(frozen=True)
class Sizes:
    """How big each check runs: ``full`` on a GPU (about 5 minutes), ``tiny`` on a CPU."""

    model: str = "resnet50"
    in_channels: int = 3
    image_size: int = 224
    num_classes: int = 1000
    batch_size: int = 256
    steps: int = 20
    warmup: int = 5
    updates: int = 5
    strategy_model: str = "resnet18"
    strategy_image_size: int = 64
    strategy_batch_size: int = 32
    strategy_steps: int = 6
    decode_images: int = 2048
    decode_batch_size: int = 128
    decode_workers: int = 0  # 0: one per CPU core, at most 16


SIZES = {
    "full": Sizes(),
    "tiny": Sizes(
        model="small-cnn",
        in_channels=1,
        image_size=28,
        num_classes=10,
        batch_size=8,
        steps=2,
        warmup=1,
        updates=2,
        strategy_model="small-cnn",
        strategy_image_size=16,
        strategy_batch_size=8,
        strategy_steps=4,
        decode_images=64,
        decode_batch_size=16,
        decode_workers=2,
    ),
}


def check_env(device, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """The machine: GPU, versions of everything the other checks use, bf16 support."""
    import torch

    gpu = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(),
            "bf16": torch.cuda.is_bf16_supported(),
        }
    passed = gpu is None or gpu["bf16"]
    name = "no GPU" if gpu is None else f"{gpu['name']}, {gpu['memory_gib']} GiB"
    return {
        "passed": passed,
        "gpu": gpu,
        "versions": library_versions(),
        "python": platform.python_version(),
        "cpus": _cpu_count(),
        "summary": f"{name}; torch {torch.__version__}" + ("" if passed else "; NO bf16"),
    }


def library_versions() -> dict[str, str | None]:
    """Versions of torch (CUDA, cuDNN, NCCL) and of the libraries the checks exercise."""
    from importlib import metadata

    import torch

    versions: dict[str, str | None] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    cudnn = torch.backends.cudnn
    versions["cudnn"] = str(cudnn.version()) if cudnn.is_available() else None
    try:
        versions["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:  # noqa: BLE001 - CPU-only builds have no NCCL
        versions["nccl"] = None
    for package in ("torchvision", "deepspeed", "ray", "webdataset", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def check_train(device, sizes: Sizes, workdir: Path, compile: bool = False) -> dict[str, Any]:
    """Dense vs DynamicSparsity(d = 0.2) training, interleaved: images/s, mask update cost;
    bf16 autocast and channels_last on CUDA; with ``compile``, recompiles over the updates."""
    from ft_dist.bench.step import StepSetup, measure

    cuda = device.type == "cuda"
    setup = StepSetup(
        model=sizes.model,
        batch_size=sizes.batch_size,
        num_classes=sizes.num_classes,
        image_size=sizes.image_size,
        in_channels=sizes.in_channels,
        steps=sizes.steps,
        warmup=sizes.warmup,
        updates=sizes.updates,
        device=str(device),
        bf16=cuda,
        channels_last=cuda,
        compile=compile,
    )
    result = measure(setup)
    ratio = result["sparse_images_per_s"] / result["dense_images_per_s"]
    recompiled = compile and result["recompiles"] != 0
    summary = (
        f"dense {result['dense_images_per_s']:.0f} img/s, sparse "
        f"{result['sparse_images_per_s']:.0f} img/s (x{ratio:.3f}); mask update "
        f"{result['mask_update_in_steps']:.2f} steps"
    )
    if compile:
        summary += f"; recompiles {result['recompiles']}"
    if not result["invariants_hold"]:
        summary += "; INVARIANTS BROKEN"
    return {
        **result,
        "sparse_vs_dense_images_per_s": ratio,
        "passed": result["invariants_hold"] and not recompiled,
        "goals": {
            f"sparse >= {SPARSE_VS_DENSE_GOAL} x dense images/s": ratio >= SPARSE_VS_DENSE_GOAL
        },
        "summary": summary,
    }


def check_train_compiled(device, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    return check_train(device, sizes, workdir, compile=True)


CHECK_NAMES = [
    "env", "train_eager", "infer_slim", "train_slim", "strategy_ddp", "strategy_deepspeed",
    "strategy_fsdp2", "decode", "ray_demo", "train_compiled",
]  # fmt: skip


def _registry() -> dict[str, Callable[..., dict[str, Any]]]:
    from ft_dist.bench.gpu_decode import check_decode
    from ft_dist.bench.gpu_demo import check_ray_demo
    from ft_dist.bench.gpu_strategy import check_ddp, check_deepspeed, check_fsdp2
    from ft_dist.bench.slim_infer import check_infer_slim
    from ft_dist.bench.slim_train import check_train_slim

    return {
        "env": check_env,
        "train_eager": check_train,
        "infer_slim": check_infer_slim,
        "train_slim": check_train_slim,
        "strategy_ddp": check_ddp,
        "strategy_deepspeed": check_deepspeed,
        "strategy_fsdp2": check_fsdp2,
        "decode": check_decode,
        "ray_demo": check_ray_demo,
        "train_compiled": check_train_compiled,
    }


def run_check(name: str, device_name: str, size: str, workdir: Path) -> dict[str, Any]:
    """Run one check here; any exception becomes ``passed: false`` with its traceback."""
    sizes = SIZES[size]
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        check = _registry()[name]
        result = check(_device(device_name), sizes, workdir)
    except Exception as error:  # noqa: BLE001 - one failing check must not stop the report
        lines = traceback.format_exc().strip().splitlines()
        result = {
            "passed": False,
            "error": f"{type(error).__name__}: {error}",
            "traceback": lines[-25:],
            "summary": f"{type(error).__name__}: {str(error)[:200]}",
        }
    result.setdefault("goals", {})
    result["sizes"] = asdict(sizes)
    return result


def _device(name: str):
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one `ft-dist bench gpu` check")
    parser.add_argument("name", choices=CHECK_NAMES)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="full", choices=sorted(SIZES))
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run_check(args.name, args.device, args.size, args.workdir)
    from ft_dist.utils import write_text_atomic

    write_text_atomic(args.result, json.dumps(result, indent=1, default=str))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
