"""Benchmarks behind `ft-dist bench`. Each module exposes `add_parser(subparsers)`."""

# Add a module here when its benchmark lands (keep imports light: torch is imported lazily).
BENCHMARK_MODULES: list = []
