"""The DST callback tells a run whose grown weights do not survive and whose model stays
near chance (issue 29's recipe: a patch transformer given as file.py:build under AdamW,
magnitude drop), not the same run with the fix it names (a drop that gives grown weights a
grace period), and not the small CNN under SGD, whose grown weights do not survive either
but which fits the digits with the rest; the summary carries the survival statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.bench.quality import PATCH_TRANSFORMER
from tests.train.conftest import tiny_config
from tests.train.test_loop import run_loop

TRANSFORMER = {"name": f"{PATCH_TRANSFORMER}:build"}
ADAMW = {"name": "adamw", "lr": 2e-3, "weight_decay": 0.05}
CNN = {"name": "small-cnn"}
SGD = {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "optim", "sparsity", "epochs", "warned"),
    [
        (TRANSFORMER, ADAMW, {"drop": "magnitude"}, 2, True),
        (TRANSFORMER, ADAMW, {"drop": "magnitude-grace"}, 2, False),
        # configs/demo_dst.yaml's DST in miniature: an update about every epoch, 6 epochs.
        (CNN, SGD, {"drop": "magnitude", "update_every_steps": 8}, 6, False),
    ],
    ids=["transformer", "transformer-grace", "cnn"],
)
def test_grown_weights_that_die_are_told_once_where_the_model_does_not_fit(
    model: dict, optim: dict, sparsity: dict, epochs: int, warned: bool, tiny_mnist: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Epochs of 8 steps. The transformer: an update every 3 steps, 5 updates, told at the
    # second epoch's end (its loss near chance). The CNN: 6 updates, the last ones keeping
    # none of the grown weights, but the loss is low by then (under 30 % of chance).
    cfg = tiny_config(
        tiny_mnist, tmp_path, model=model, optim=optim, sparsity=sparsity,
        train={"epochs": epochs},
    )  # fmt: skip
    summary, tracker, _ = run_loop(cfg)
    notes = [n for n in tracker.notes if "grown weights" in n]
    assert len(notes) == (1 if warned else 0), (notes, summary["sparse/grown_kept"])
    churns = sparsity["drop"] == "magnitude"  # a grace period keeps them all
    assert (summary["sparse/grown_kept"] < 0.05) == churns, summary["sparse/grown_kept"]
    assert summary["sparse/effective_density"] <= summary["sparse/density"]
    shown = tracker.summaries[-1]
    assert shown["sparse/grown_kept_run"] == summary["sparse/grown_kept_run"]
