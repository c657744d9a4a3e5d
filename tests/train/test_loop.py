"""The per-worker loop without Ray: one process, and 2 gloo processes (DDP, EDST, DeepSpeed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ft_dist.cli import main
from ft_dist.config import save_config
from ft_dist.layout import checkpoint_name, checkpoints_dir, run_dir, ticket_path
from ft_dist.models import build_model
from ft_dist.sparse.flops import forward_flops
from ft_dist.train.checkpoint import SHARED_FILE
from ft_dist.train.loop import train
from ft_dist.train.session import LocalSession
from tests.gloo_workers import run_workers
from tests.train.conftest import NullTracker, tiny_config


def run_loop(cfg) -> tuple[dict, NullTracker, LocalSession]:
    tracker = NullTracker()
    with LocalSession(run_dir(cfg.train), device="cpu") as session:
        summary = train(cfg, session, tracker)
    return summary, tracker, session


def final_state(cfg) -> dict:
    """The newest checkpoint's rank-0 state (weights, optimizer, masks, loop position)."""
    root = checkpoints_dir(run_dir(cfg.train))
    newest = max(root.iterdir(), key=lambda p: int(p.name))
    state = torch.load(newest / SHARED_FILE, weights_only=True)
    if (newest / ".metadata").is_file():  # FSDP2: the sharded state, as whole tensors
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        whole = newest.parent / f"{newest.name}.whole.pt"
        dcp_to_torch_save(newest, whole)
        state["sharded"] = torch.load(whole, weights_only=False)
        whole.unlink()
    return state


def resume_notes(tracker) -> list[str]:
    """The tracker's notes about resuming (a tiny run may also be told its DST churns)."""
    return [note for note in tracker.notes if note.startswith("resumed from")]


def assert_same_training_state(a: dict, b: dict) -> None:
    """Every replicated state of the checkpoint registry (weights, optimizer under DDP, masks
    and DST schedule, tickets, loop position) is bit-identical."""
    assert a.keys() == b.keys()
    assert {"tickets", "loop"} <= a.keys()
    assert {"model", "sparsity"} <= a.keys() or "sharded" in a  # FSDP2: all sharded
    for key in a.keys() - {"meta", "loop"}:
        _assert_equal(a[key], b[key], key)
    position = {k: v for k, v in a["loop"].items() if k != "train_seconds"}  # wall time
    assert position == {k: v for k, v in b["loop"].items() if k != "train_seconds"}


def _assert_equal(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, where


def resume_copy(cfg, step: int, out: Path):
    """A fresh run directory holding only checkpoint ``step`` of ``cfg``'s run."""
    resumed = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"output_dir": str(out)})}
    )
    source = checkpoints_dir(run_dir(cfg.train)) / checkpoint_name(step)
    shutil.copytree(source, checkpoints_dir(run_dir(resumed.train)) / checkpoint_name(step))
    return resumed


def trains_resumes_and_is_priced(cfg, tmp_path: Path, capsys) -> tuple[dict, object, dict]:
    """The contract of a table entry: ``cfg`` trains and writes a ticket, a copy resumed from
    its checkpoint at step 4 ends bit-identical, and `ft-dist flops --config` prices it.
    Returns (summary, tracker, the price as JSON)."""
    summary, tracker, _ = run_loop(cfg)
    assert summary["steps"] == cfg.num_epochs * 8 and summary["train_flops"] > 0
    assert summary["tickets"]
    resumed = resume_copy(cfg, 4, tmp_path / "resumed")
    run_loop(resumed)
    assert_same_training_state(final_state(cfg), final_state(resumed))
    path = save_config(cfg, tmp_path / "run.yaml")
    assert main(["flops", "--config", str(path), "--json"]) == 0
    priced = json.loads(capsys.readouterr().out)
    assert priced["run"]["train_relative"] > 0.0
    return summary, tracker, priced


@pytest.mark.slow
def test_resume_mid_epoch_equals_uninterrupted_run(tiny_mnist: Path, tmp_path: Path) -> None:
    # 8 steps per epoch, 2 epochs; DST updates every 3 steps; checkpoints every 5 steps.
    cfg = tiny_config(
        tiny_mnist,
        tmp_path / "a",
        train={"checkpoint_every_steps": 5, "keep_checkpoints": 10},
        optim={"warmup_epochs": 0.5, "schedule": "cosine"},
    )
    summary, tracker, session = run_loop(cfg)
    assert summary["steps"] == 16 and summary["images_seen"] == 16 * 32
    assert summary["images_per_s"] > 0 and summary["train_flops"] > 0
    # SPEC §8: a RigL step at density 0.2 costs well under a dense step's 3·f_D.
    with torch.device("meta"):
        dense_fwd, _ = forward_flops(build_model("small-cnn", 10, 1, 28), (1, 28, 28), {})
    assert 0.1 * 3 * dense_fwd < summary["train_flops_per_example"] < 0.6 * 3 * dense_fwd
    assert summary["train_flops"] == summary["train_flops_per_example"] * 16 * 32
    assert 0.0 <= summary["metrics"]["test/accuracy"] <= 1.0
    assert [r["checkpoint_dir"] is not None for r in session.reports].count(True) == 5
    saved = json.loads((run_dir(cfg.train) / "summary.json").read_text())
    assert saved["steps"] == 16 and saved["tickets"] == ["tickets/ticket_01.pt"]

    resumed = resume_copy(cfg, 5, tmp_path / "b")  # mid-epoch 0, between DST updates
    resumed_summary, resumed_tracker, _ = run_loop(resumed)
    assert resumed_summary["steps"] == 16
    assert resume_notes(tracker) == []  # a fresh run says nothing about resuming
    [note] = resume_notes(resumed_tracker)
    assert note.endswith("epoch 0, step 5 of 16, 160 images seen, on 1 worker(s)"), note
    assert_same_training_state(final_state(cfg), final_state(resumed))
    assert resumed_summary["metrics"] == summary["metrics"]

    ticket = torch.load(ticket_path(run_dir(cfg.train), 1), weights_only=True)
    assert ticket["meta"]["model"] == "small-cnn" and ticket["meta"]["num_classes"] == 10
    for name, mask in ticket["masks"].items():
        assert torch.count_nonzero(ticket["model"][name][~mask]) == 0
    logged = {key for _, metrics in tracker.logged for key in metrics}
    assert {"train/loss", "train/lr", "train/images_per_s", "sparse/density"} <= logged


def test_checkpoint_of_another_density_is_refused(tiny_mnist: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_mnist, tmp_path, train={"epochs": 1})
    run_loop(cfg)
    record = (run_dir(cfg.train) / "config.yaml").read_text()
    denser = cfg.model_copy(update={"sparsity": cfg.sparsity.model_copy(update={"density": 0.5})})
    with pytest.raises(ValueError, match="density"):
        run_loop(denser)
    # The refused resume leaves the run's record as it was (density 0.2, not 0.5).
    assert (run_dir(cfg.train) / "config.yaml").read_text() == record


EDST = {
    "method": "edst",
    "num_members": 2,
    "edst": {"exploration_epochs": 1, "refinement_epochs": 2},
}


def _edst_worker(rank: int, world_size: int, root: Path, out: Path) -> None:
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    # 2 ranks × 32 = 64 per step: 4 steps per epoch; epochs 0 | 1-2 (phase 1) | 3-4 (phase 2).
    cfg = tiny_config(root, out / "a", ensemble=EDST, train={"keep_checkpoints": 10})
    summary, _, session = run_loop(cfg)
    run = run_dir(cfg.train)
    assert summary["epochs"] == 5 and summary["steps"] == 20
    assert summary["tickets"] == ["tickets/ticket_01.pt", "tickets/ticket_02.pt"]
    val = {int(r["epoch"]) - 1: r["val/accuracy"] for r in session.reports if "val/accuracy" in r}
    tickets = [torch.load(ticket_path(run, m), weights_only=True) for m in (1, 2)]
    for phase, (ticket, epochs) in enumerate(zip(tickets, ((1, 2), (3, 4)), strict=True), 1):
        meta = ticket["meta"]
        assert meta["phase"] == phase and meta["member"] == phase
        assert meta["epoch"] in epochs and meta["val_accuracy"] == max(val[e] for e in epochs)
    # Global exploration (q = 0.8) between the phases moved the masks.
    assert any(not torch.equal(tickets[0]["masks"][n], m) for n, m in tickets[1]["masks"].items())

    # Resume in the middle of phase 2 (after epoch 3): same ticket 2, ticket 1 not rewritten.
    if rank == 0:
        resume_copy(cfg, 16, out / "b")
    torch.distributed.barrier()
    resumed = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"output_dir": str(out / "b")})}
    )
    run_loop(resumed)
    if rank == 0:
        assert not ticket_path(run_dir(resumed.train), 1).exists()
        again = torch.load(ticket_path(run_dir(resumed.train), 2), weights_only=True)
        _assert_equal(again["model"], tickets[1]["model"], "ticket 2")
        _assert_equal(again["masks"], tickets[1]["masks"], "ticket 2 masks")
        assert_same_training_state(final_state(cfg), final_state(resumed))


@pytest.mark.dist
@pytest.mark.slow
def test_edst_two_ranks_tickets_and_mid_phase_resume(tiny_mnist: Path, tmp_path: Path) -> None:
    run_workers(_edst_worker, 2, tiny_mnist, tmp_path)


def resume_on_every_rank(cfg, rank: int, step: int, last_step: int, out: Path):
    """Under a process group: rank 0 copies checkpoint ``step`` of ``cfg``'s finished run to
    ``out``, every rank resumes and finishes it, and this rank's own ZeRO partition (fp32
    masters + optimizer state) at ``last_step`` must equal the uninterrupted run's.
    Returns the resumed config."""
    if rank == 0:
        resume_copy(cfg, step, out)
    torch.distributed.barrier()
    resumed = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"output_dir": str(out)})}
    )
    run_loop(resumed)
    a, b = (checkpoints_dir(run_dir(c.train)) / checkpoint_name(last_step) for c in (cfg, resumed))
    own = f"rank_{rank:05d}.pt"
    _assert_equal(
        torch.load(a / own, weights_only=True), torch.load(b / own, weights_only=True), own
    )
    return resumed
