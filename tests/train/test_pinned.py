"""Refactors keep training identical: the demo configs, shrunk to the tiny MNIST slice, give
the losses and tickets pinned in tests/fixtures/pinned_runs.json (written by the code before
the frame of issue 24 changed). A change that moves a loss or a ticket fails here; one that is
meant to re-pins with ``FT_DIST_REPIN=1 pytest tests/train/test_pinned.py`` and says why in
its commit.

The losses are compared at float tolerance (they are sums of float32 values); masks are
compared exactly (their sha256) and weights by their sum and absolute sum.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from ft_dist.config import config_from_dict
from ft_dist.layout import run_dir, ticket_path
from ft_dist.train.loop import train
from ft_dist.train.session import LocalSession
from tests.train.conftest import NullTracker

PINNED = Path(__file__).resolve().parents[1] / "fixtures" / "pinned_runs.json"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# name: (demo config, overrides per section). One rank, 8 steps of 32 digits per epoch.
RUNS = {
    "dst": ("demo_dst.yaml", {"train": {"epochs": 2}, "sparsity": {"update_every_steps": 3}}),
    "edst": (
        "demo_edst.yaml",
        {
            "sparsity": {"update_every_steps": 3},
            "ensemble": {
                "num_members": 2,
                "edst": {"exploration_epochs": 1, "refinement_epochs": 1},
            },
        },
    ),
    "adamw-set": (
        "demo_dst.yaml",
        {
            "train": {"epochs": 2},
            "optim": {"name": "adamw", "lr": 0.002},
            "sparsity": {"update_every_steps": 3, "growth": "random"},
        },
    ),
    "edst-channels": (
        "demo_edst.yaml",
        {
            "sparsity": {"update_every_steps": 3, "channel_sparsity": 0.5, "channel_end_step": 6},
            "ensemble": {
                "num_members": 2,
                "edst": {"exploration_epochs": 1, "refinement_epochs": 1},
            },
        },
    ),
}


def _config(name: str, data_root: Path, out: Path):
    file, overrides = RUNS[name]
    values = yaml.safe_load((CONFIGS / file).read_text())
    values["data"].update(
        root=str(data_root), batch_size_per_worker=32, shuffle_buffer=64, verify="size"
    )
    values["train"].update(num_workers=1, output_dir=str(out), run_name=name, log_every_steps=1)
    values["tracking"] = {"wandb": "disabled"}
    for section, update in overrides.items():
        for key, value in update.items():
            if isinstance(value, dict):
                values[section][key] = {**values[section].get(key, {}), **value}
            else:
                values[section][key] = value
    return config_from_dict(values, source=file)


def _run(name: str, data_root: Path, out: Path) -> dict:
    cfg = _config(name, data_root, out)
    tracker = NullTracker()
    with LocalSession(run_dir(cfg.train), device="cpu") as session:
        summary = train(cfg, session, tracker)
    losses = [m["train/loss"] for _, m in tracker.logged if "train/loss" in m]
    tickets = {}
    for relpath in summary["tickets"]:
        member = int(Path(relpath).stem.rsplit("_", 1)[1])
        ticket = torch.load(ticket_path(run_dir(cfg.train), member), weights_only=True)
        masks = hashlib.sha256()
        for key in sorted(ticket["masks"]):
            masks.update(key.encode() + ticket["masks"][key].numpy().tobytes())
        weights = [v.double() for v in ticket["model"].values() if v.is_floating_point()]
        tickets[relpath] = {
            "masks_sha256": masks.hexdigest(),
            "weight_sum": float(sum(w.sum() for w in weights)),
            "weight_abs_sum": float(sum(w.abs().sum() for w in weights)),
        }
    return {"losses": losses, "tickets": tickets, "steps": summary["steps"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_same_seed_same_losses_and_tickets(name: str, tiny_mnist: Path, tmp_path: Path) -> None:
    got = _run(name, tiny_mnist, tmp_path)
    pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    if os.environ.get("FT_DIST_REPIN") == "1":
        pinned[name] = got
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    want = pinned[name]
    assert got["steps"] == want["steps"]
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5, abs=1e-6)
    assert got["tickets"].keys() == want["tickets"].keys()
    for key, ticket in want["tickets"].items():
        assert got["tickets"][key]["masks_sha256"] == ticket["masks_sha256"], key
        assert got["tickets"][key]["weight_sum"] == pytest.approx(ticket["weight_sum"], rel=1e-5)
        assert got["tickets"][key]["weight_abs_sum"] == pytest.approx(
            ticket["weight_abs_sum"], rel=1e-5
        )
