"""Resume from the newest complete checkpoint that verifies, and say which one it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ft_dist.layout import checkpoints_dir, run_dir
from ft_dist.train import worker
from ft_dist.train.checkpoint import SHARED_FILE
from tests.train.conftest import tiny_config
from tests.train.test_loop import (
    assert_same_training_state,
    final_state,
    resume_notes,
    run_loop,
)


def flip_middle_bytes(path: Path) -> None:
    """The issue's damage: bytes in the middle of the file changed, same size."""
    size = path.stat().st_size
    with open(path, "r+b") as stream:
        stream.seek(size // 2)
        data = stream.read(4)
        stream.seek(size // 2)
        stream.write(bytes(b ^ 0xFF for b in data))


def test_a_damaged_newest_checkpoint_resumes_from_the_previous_and_names_it(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    train = {"checkpoint_every_steps": 3, "keep_checkpoints": 10}
    cfg = tiny_config(tiny_mnist, tmp_path, train=train)
    run_loop(cfg)  # uninterrupted, 16 steps: the reference
    reference = final_state(cfg)
    root = checkpoints_dir(run_dir(cfg.train))
    for late in ("000000009", "000000012", "000000015", "000000016"):  # "killed" after 8
        shutil.rmtree(root / late)
    (run_dir(cfg.train) / "summary.json").unlink()
    flip_middle_bytes(root / "000000008" / SHARED_FILE)
    summary, tracker, _ = run_loop(cfg)
    [note] = resume_notes(tracker)  # the checkpoint restored, not the damaged one tried first
    assert note.startswith(f"resumed from {root / '000000006'}: epoch 0, step 6 of 16"), note
    assert summary["steps"] == 16
    assert_same_training_state(reference, final_state(cfg))


def test_ray_copy_names_never_repeat(tmp_path: Path) -> None:
    """A run that fell back past a damaged checkpoint writes that step again: Ray's copy
    gets a new directory, so no two registrations share one (which left Ray's snapshot
    naming a directory it had deleted, and the run unresumable)."""
    session = object.__new__(worker.RaySession)
    session._storage, session._experiment, session._token = str(tmp_path), tmp_path, "abc123"
    assert session._ray_copy_name("000000012") == "ray_checkpoints/000000012"
    (tmp_path / "ray_checkpoints" / "000000012").mkdir(parents=True)
    assert session._ray_copy_name("000000012") == "ray_checkpoints/000000012.1"
    (tmp_path / "ray_checkpoints" / "000000012.1").mkdir()
    assert session._ray_copy_name("000000012") == "ray_checkpoints/000000012.2"
    session._storage = "s3://bucket/runs"
    assert session._ray_copy_name("000000012") == "ray_checkpoints/000000012.abc123"


def test_a_fixed_global_batch_resumes_with_the_same_loader_workers() -> None:
    from ft_dist.train.checkpoint import check_compatible

    meta = {"model": "small-cnn", "density": 0.2, "elastic_lanes": 2}
    check_compatible(meta, dict(meta), "ckpt")
    check_compatible({"model": "small-cnn", "density": 0.2}, meta, "ckpt")  # older: no record
    with pytest.raises(ValueError, match="resume with data.loader_workers=2"):
        check_compatible(meta, {**meta, "elastic_lanes": 4}, "ckpt")
