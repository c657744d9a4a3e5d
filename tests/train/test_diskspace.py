"""A full disk while writing a checkpoint or ticket: one line naming the device, the path,
the bytes needed and free; the previous checkpoint is kept; never retried."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from ft_dist.layout import checkpoint_name
from ft_dist.train import checkpoint as ckpt
from ft_dist.train import diskspace
from ft_dist.train.diskspace import DiskFullError, device_of, is_disk_full
from ft_dist.train.session import LocalSession
from tests.gloo_workers import run_workers

META = {"model": "small-cnn", "density": 0.2}
REAL_SAVE = torch.save


def full_disk_for(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save of files whose name contains ``name`` goes to /dev/full (the real ENOSPC
    write: torch raises its "unexpected pos" RuntimeError), and the disk reads as full."""

    def save(obj, target, *args, **kwargs):
        if name in str(target):
            target = "/dev/full"
        return REAL_SAVE(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 1 << 19)


def _state(step: int) -> dict:
    return {"model": {"w": torch.full((1 << 18,), float(step))}, "loop": {"global_step": step}}


def test_full_disk_checkpoint_is_one_line_and_keeps_the_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run" / "checkpoints"
    previous = ckpt.save_checkpoint(root, 10, _state(10), {}, META, rank=0, keep=2)
    full_disk_for(ckpt.SHARED_FILE, monkeypatch)
    with pytest.raises(DiskFullError) as raised:
        ckpt.save_checkpoint(root, 20, _state(20), {}, META, rank=0, keep=2)
    message = str(raised.value)
    assert "\n" not in message and "unexpected pos" not in message
    assert message.startswith(f"no space left on {device_of(root)} writing checkpoint {root} ")
    assert "(needs ~1.0 MB, 0.5 MB free)" in message, message
    assert f"the previous checkpoint {previous} is kept" in message
    assert [p.name for p in root.iterdir()] == [previous.name]  # the partial one is gone
    shared, _ = ckpt.load_checkpoint(previous, 0)
    assert shared["loop"]["global_step"] == 10
    assert isinstance(raised.value, ValueError)  # a user error: worker.fit never retries it


def test_other_write_errors_are_not_called_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path, 1)
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path, 1)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path, 1)
    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert not is_disk_full(short, tmp_path, 1 << 20)  # plenty free here: something else
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 0)
    assert is_disk_full(short, tmp_path, 1 << 20)


def test_full_disk_ticket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full_disk_for("ticket_01", monkeypatch)
    path = tmp_path / "tickets" / "ticket_01.pt"
    with pytest.raises(DiskFullError, match=r"writing ticket .*ticket_01.pt \(needs ~1.0 MB"):
        ckpt.write_ticket(path, _state(1))
    assert list(path.parent.iterdir()) == []


def _rank1_disk_full(rank: int, world_size: int, root: Path) -> None:
    with LocalSession(root.parent):
        ckpt.save_checkpoint(root, 10, _state(10), {"rank": rank}, META, rank=rank, keep=2)
        if rank == 1:
            patch = pytest.MonkeyPatch()
            full_disk_for(ckpt.rank_file(1), patch)
        try:
            ckpt.save_checkpoint(root, 20, _state(20), {"rank": rank}, META, rank=rank, keep=2)
        except DiskFullError as error:
            assert "no space left" in str(error)
        else:
            raise AssertionError(f"rank {rank} did not stop")
        ckpt.barrier()  # rank 0 has removed the partial checkpoint
        assert sorted(p.name for p in root.iterdir()) == [checkpoint_name(10)]


@pytest.mark.dist
def test_a_full_disk_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    run_workers(_rank1_disk_full, 2, tmp_path / "run" / "checkpoints")


def test_preflight_wants_room_for_keep_plus_one_checkpoints_and_the_tickets(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ft_dist.models import build_model
    from ft_dist.preflight import check_disk_space
    from tests.train.conftest import tiny_config

    cfg = tiny_config(tiny_mnist, tmp_path, train={"keep_checkpoints": 3})
    with torch.device("meta"):
        model = build_model("small-cnn", 10, 1, 28)
    checkpoint, ticket = diskspace.run_bytes(cfg, model)
    params = sum(p.numel() for p in model.parameters())
    # weights + masks, momentum, and the best-validation candidate (train.ticket=best)
    assert ticket > 4 * params and checkpoint == 2 * ticket + 4 * params
    need = 4 * checkpoint + ticket
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: need)
    check_disk_space(cfg, model)  # exactly enough
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: need - 1)
    with pytest.raises(ValueError) as raised:
        check_disk_space(cfg, model)
    message = str(raised.value)
    assert message.startswith("train.output_dir: ") and "train.keep_checkpoints=3 + 1" in message
    assert "lower train.keep_checkpoints" in message and "\n" not in message


def test_full_storage_disk_while_ray_copies_a_checkpoint(tmp_path: Path) -> None:
    from ft_dist.train.worker import raise_if_disk_full

    src = tmp_path / "run" / "checkpoints" / "000000010"
    src.mkdir(parents=True)
    (src / "state.pt").write_bytes(b"x" * 100)
    dest = tmp_path / "storage" / "ray_checkpoints" / "000000010"
    with pytest.raises(DiskFullError, match="Ray's copy of checkpoint .*ray.storage_path"):
        raise_if_disk_full(OSError(errno.ENOSPC, "No space left"), src, dest)
    raise_if_disk_full(OSError(errno.EACCES, "Permission denied"), src, dest)  # not ours
