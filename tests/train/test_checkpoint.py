"""Atomic checkpoints, keep-N, safe loading, compatibility checks, RNG state, tickets."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ft_dist.train import checkpoint as ckpt
from ft_dist.train.session import latest_complete_checkpoint

META = {
    "model": "small-cnn",
    "num_classes": 10,
    "density": 0.2,
    "sparse_init": "erk",
    "strategy": "ddp",
    "zero_stage": 0,
    "world_size": 1,
}


def save(root: Path, step: int, keep: int = 2) -> Path:
    shared = {"model": {"w": torch.full((3,), float(step))}, "loop": {"global_step": step}}
    return ckpt.save_checkpoint(
        root, step, shared, {"rng": ckpt.capture_rng_state()}, META, rank=0, keep=keep
    )


def test_checkpoints_are_complete_directories_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    for step in (5, 10, 15):
        path = save(root, step)
    assert sorted(p.name for p in root.iterdir()) == ["000000010", "000000015"]
    assert {p.name for p in path.iterdir()} == {"state.pt", "rank_00000.pt", "meta.json"}
    shared, local = ckpt.load_checkpoint(path, rank=0)
    assert shared["loop"]["global_step"] == 15 and torch.equal(
        shared["model"]["w"], torch.full((3,), 15.0)
    )
    assert local is not None and ckpt.load_checkpoint(path, rank=1)[1] is None
    # A torn write (the temp dir of a crashed save) is never taken for a checkpoint.
    (root / ".tmp-000000020").mkdir()
    assert latest_complete_checkpoint(tmp_path / "run") == str(path)
    # Saving the same step again replaces it whole.
    assert save(root, 15) == path and ckpt.load_checkpoint(path, 0)[0]["loop"]["global_step"] == 15


def test_loading_never_unpickles_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil"
    path.mkdir()
    torch.save({"payload": Path("/etc/passwd")}, path / ckpt.SHARED_FILE)  # an arbitrary object
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_checkpoint(path, rank=0)
    with pytest.raises(FileNotFoundError, match="not a complete ft_dist checkpoint"):
        ckpt.load_checkpoint(tmp_path, rank=0)


def test_checkpoint_of_another_model_or_density_is_refused() -> None:
    ckpt.check_compatible(META, dict(META), "ckpt")
    with pytest.raises(
        ValueError, match=r"model: checkpoint 'small-cnn' vs this run 'wrn-16-4'.*density"
    ):
        ckpt.check_compatible(META, {**META, "model": "wrn-16-4", "density": 0.1}, "ckpt")
    zero = {**META, "strategy": "deepspeed", "zero_stage": 2}
    with pytest.raises(ValueError, match="world_size"):
        ckpt.check_compatible(zero, {**zero, "world_size": 4}, "ckpt")


def test_rng_state_survives_a_weights_only_round_trip(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(ckpt.capture_rng_state(), tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(2))
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_tickets_are_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "tickets" / "ticket_01.pt"
    assert ckpt.write_ticket(path, {"meta": {"epoch": 3}})
    assert not ckpt.write_ticket(path, {"meta": {"epoch": 9}})
    assert torch.load(path, weights_only=True)["meta"]["epoch"] == 3
