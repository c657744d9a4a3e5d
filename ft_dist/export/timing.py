"""Wall-clock timing that compares: callables run interleaved, exported ensemble programs.

Each repeat runs every candidate once, in a rotating order, after one warm-up call of each,
so their figures compare on a machine whose load changes; medians over the repeats. Used by
`ft-dist bench infer` (bench/infer.py, bench/slim_infer.py) and `ft-dist compare`
(orchestrate/compare.py: the exported programs of every variant).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ft_dist.export.artifact import read_artifact


def interleaved_medians(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable: one warm-up call each, then ``repeats`` rounds that
    run every one once, the order rotated by one each round."""
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {key: [] for key in runs}
    keys = list(runs)
    for repeat in range(repeats):
        shift = repeat % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def time_pair(
    first: Callable[[], Any], second: Callable[[], Any], repeats: int
) -> tuple[float, float]:
    """Median seconds of each, interleaved (alternating which runs first) after a warm-up."""
    medians = interleaved_medians({"first": first, "second": second}, repeats)
    return medians["first"], medians["second"]


def time_programs(
    directories: dict[str, Path], batch_size: int = 256, repeats: int = 7
) -> dict[str, float]:
    """Milliseconds per image of each exported ensemble (``DIR/ensemble.pt2``), all timed in
    one interleaved loop (`interleaved_medians`) on random images of its input shape."""
    programs, shapes = {}, {}
    for key, directory in directories.items():
        facts = read_artifact(directory).preprocessing
        shapes[key] = (facts["in_channels"], facts["image_size"], facts["image_size"])
        programs[key] = torch.export.load(str(Path(directory) / "ensemble.pt2")).module()
    generator = torch.Generator().manual_seed(1)
    images = {k: torch.rand(batch_size, *s, generator=generator) for k, s in shapes.items()}
    runs = {key: (lambda key=key: programs[key](images[key])) for key in programs}
    with torch.inference_mode():
        medians = interleaved_medians(runs, repeats)
    return {key: 1e3 * seconds / batch_size for key, seconds in medians.items()}
