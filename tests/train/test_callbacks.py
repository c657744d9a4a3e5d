"""The DST callback tells a run whose grown weights do not survive (issue 29's recipe: a
patch transformer given as file.py:build under AdamW, magnitude drop), and not the same run
with the fix it names (a drop that gives grown weights a grace period); the summary carries
the survival statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.bench.quality import PATCH_TRANSFORMER
from tests.train.conftest import tiny_config
from tests.train.test_loop import run_loop

TRANSFORMER = {"name": f"{PATCH_TRANSFORMER}:build"}
ADAMW = {"name": "adamw", "lr": 2e-3, "weight_decay": 0.05}


@pytest.mark.slow
@pytest.mark.parametrize(("drop", "warned"), [("magnitude", True), ("magnitude-grace", False)])
def test_grown_weights_that_die_are_told_once(
    drop: str, warned: bool, tiny_mnist: Path, tmp_path: Path
) -> None:
    # 16 steps, an update every 3: 5 updates, 4 of them measuring the previous growth.
    cfg = tiny_config(tiny_mnist, tmp_path, model=TRANSFORMER, optim=ADAMW, sparsity={"drop": drop})
    summary, tracker, _ = run_loop(cfg)
    notes = [n for n in tracker.notes if "grown weights" in n]
    assert len(notes) == (1 if warned else 0), (notes, summary["sparse/grown_kept_run"])
    assert (summary["sparse/grown_kept_run"] < 0.05) == warned
    assert summary["sparse/effective_density"] <= summary["sparse/density"]
    shown = tracker.summaries[-1]
    assert shown["sparse/grown_kept_run"] == summary["sparse/grown_kept_run"]
