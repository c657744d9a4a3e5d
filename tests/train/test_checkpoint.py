"""Atomic checkpoints, keep-N, safe loading, compatibility checks, RNG state, tickets."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ft_dist.layout import checkpoints_dir, run_dir
from ft_dist.train import checkpoint as ckpt
from ft_dist.train.session import LocalSession, latest_complete_checkpoint
from tests.gloo_workers import run_workers
from tests.train.conftest import tiny_config
from tests.train.test_loop import assert_same_training_state, final_state, run_loop

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
    assert {p.name for p in path.iterdir()} == {
        "state.pt",
        "rank_00000.pt",
        "meta.json",
        "index.json",
    }
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
    with pytest.raises(ckpt.CheckpointError) as refused:
        ckpt.load_checkpoint(path, rank=0)
    message = str(refused.value)
    assert f"{path / ckpt.SHARED_FILE} is not a trusted ft_dist checkpoint" in message
    assert "\n" not in message and "weights_only" not in message
    with pytest.raises(ckpt.CheckpointError, match="not a complete ft_dist checkpoint"):
        ckpt.load_checkpoint(tmp_path, rank=0)


def flip_tensor_byte(path: Path) -> None:
    """Change one byte inside the stored values of ``save``'s weight tensor (same size)."""
    data = bytearray(path.read_bytes())
    start = data.find(np.full(3, 15.0, dtype=np.float32).tobytes())
    assert start >= 0, "tensor bytes not found"
    data[start + 1] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_tensor_byte_is_caught_and_the_previous_checkpoint_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "run" / "checkpoints"
    save(root, 10)
    newest = save(root, 15)
    flip_tensor_byte(newest / ckpt.SHARED_FILE)
    # Without the index the flip would load silently, as a wrong weight.
    silent = torch.load(newest / ckpt.SHARED_FILE, weights_only=True)
    assert not torch.equal(silent["model"]["w"], torch.full((3,), 15.0))
    with caplog.at_level("WARNING"):
        shared, local = ckpt.load_checkpoint(newest, rank=0)
    assert shared["loop"]["global_step"] == 10 and local is not None
    assert f"{newest / ckpt.SHARED_FILE} does not match its sha256 in index.json" in caplog.text


def test_no_usable_checkpoint_is_one_line_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    newest = save(root, 15, keep=1)
    (newest / ckpt.INDEX_FILE).unlink()  # as written before checksums: loads unchecked
    assert ckpt.load_checkpoint(newest, rank=0)[0]["loop"]["global_step"] == 15
    (newest / ckpt.SHARED_FILE).write_bytes(bytes(range(256)) * 8)  # garbage, no index
    with pytest.raises(ckpt.CheckpointError) as failed:
        ckpt.load_checkpoint(newest, rank=0)
    message = str(failed.value)
    assert message.startswith(f"no usable checkpoint to resume from: {newest / 'state.pt'}")
    assert "cannot be read" in message and "new train.run_name" in message
    assert "\n" not in message


def test_a_deleted_newest_checkpoint_falls_back_to_the_older_one(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    save(root, 10)
    newest = save(root, 15)
    shutil.rmtree(newest)  # what Ray's snapshot may still point to
    assert ckpt.load_checkpoint(newest, rank=0)[0]["loop"]["global_step"] == 10


def _resume_after_rank1_file_damaged(rank: int, world_size: int, root: Path) -> None:
    with LocalSession(root.parent):
        shared = {"model": {"w": torch.zeros(3)}, "loop": {"global_step": 0}}
        for step in (10, 15):
            shared["loop"]["global_step"] = step
            path = ckpt.save_checkpoint(root, step, shared, {"rank": rank}, META, rank=rank, keep=2)
        ckpt.barrier()
        if rank == 1:
            with open(path / ckpt.rank_file(1), "r+b") as damaged:  # same size, new bytes
                damaged.seek(-30, os.SEEK_END)
                damaged.write(b"\xff\xfe")
        ckpt.barrier()
        shared, local = ckpt.load_checkpoint(path, rank)
        assert shared["loop"]["global_step"] == 10, f"rank {rank} resumed from {shared['loop']}"
        assert local == {"rank": rank}


@pytest.mark.dist
def test_all_ranks_fall_back_together_when_one_rank_file_is_damaged(tmp_path: Path) -> None:
    run_workers(_resume_after_rank1_file_damaged, 2, tmp_path / "run" / "checkpoints")


def test_checkpoint_of_another_model_or_density_is_refused() -> None:
    ckpt.check_compatible(META, dict(META), "ckpt")
    with pytest.raises(
        ValueError, match=r"model: checkpoint 'small-cnn' vs this run 'wrn-16-4'.*density"
    ):
        ckpt.check_compatible(META, {**META, "model": "wrn-16-4", "density": 0.1}, "ckpt")
    zero = {**META, "strategy": "deepspeed", "zero_stage": 2, "per_rank_partitions": True}
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


@pytest.mark.slow
def test_a_run_whose_newest_checkpoint_is_damaged_resumes_from_the_previous_one(
    tiny_mnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is lost: the resumed run ends bit-identical to the uninterrupted one."""
    train = {"checkpoint_every_steps": 4, "keep_checkpoints": 2}
    reference = tiny_config(tiny_mnist, tmp_path / "a", train=train)
    run_loop(reference)
    damaged = tiny_config(tiny_mnist, tmp_path / "b", train=train)
    shutil.copytree(run_dir(reference.train), run_dir(damaged.train))
    root = checkpoints_dir(run_dir(damaged.train))
    assert sorted(p.name for p in root.iterdir()) == ["000000012", "000000016"]
    state = root / "000000016" / ckpt.SHARED_FILE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        summary, _, _ = run_loop(damaged)
    assert f"skipping checkpoint: {state} does not match its sha256" in caplog.text
    assert summary["steps"] == 16
    assert_same_training_state(final_state(reference), final_state(damaged))
