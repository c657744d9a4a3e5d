"""Benchmarks behind `ft-dist bench`. Each module exposes `add_parser(subparsers)`."""

# Add a module here when its benchmark lands (keep imports light: torch is imported lazily).
from ft_dist.bench import (
    channels,
    data,
    gpu,
    infer,
    memory,
    quality,
    scaling,
    slim_train,
    step,
)

BENCHMARK_MODULES: list = [step, data, scaling, infer, gpu, channels, slim_train, memory, quality]
