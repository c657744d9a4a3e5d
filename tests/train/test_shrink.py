"""Shrinking at channel removal (sparsity.channel_shrink) trains the network the masked run
trains: with the same seeds, on 2 gloo ranks, every strategy and growth criterion gives the
same losses, the same masks and (to float rounding) the same kept weights, through
removals and the mask updates and EDST explorations after them. Compared through what a
user gets: the logged losses and the exported (slim) tickets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ft_dist.ensemble.tickets import load_ticket
from ft_dist.export.slim import slim_ticket
from ft_dist.layout import run_dir, run_tickets
from tests.gloo_workers import run_workers
from tests.train.conftest import tiny_config
from tests.train.test_loop import run_loop

# small-cnn on the tiny MNIST slice, 2 ranks: 4 steps per epoch, an update every 2 steps,
# half of the removable channels gone by step 4, mask updates after it.
CHANNELS = {
    "update_every_steps": 2,
    "channel_sparsity": 0.5,
    "channel_start_step": 0,
    "channel_end_step": 4,
}
EDST = {
    "method": "edst",
    "num_members": 2,
    "edst": {"exploration_epochs": 2, "refinement_epochs": 1},
}
CASES = {
    "ddp-gradient": ({}, {"growth": "gradient"}, None),
    "ddp-random-edst": ({}, {"growth": "random"}, EDST),
    "ddp-momentum-member": (
        {},
        {"growth": "momentum"},
        {"method": "dst_ensemble", "num_members": 2},
    ),
    "zero1-gradient": ({"strategy": "deepspeed", "zero_stage": 1}, {"growth": "gradient"}, None),
    "zero0-random": ({"strategy": "deepspeed", "zero_stage": 0}, {"growth": "random"}, None),
    "zero2-random-edst": ({"strategy": "deepspeed", "zero_stage": 2}, {"growth": "random"}, EDST),
}


def _losses(tracker) -> list[float]:
    return [m["train/loss"] for _, m in tracker.logged if "train/loss" in m]


def _compare_worker(rank: int, world_size: int, names: list[str], root: Path, out: Path) -> None:
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    for name in names:
        train, sparsity, ensemble = CASES[name]
        runs = {}
        for shrink in (False, True):
            sections = {
                "train": {"epochs": 2, "log_every_steps": 1, "ticket": "last", **train},
                "sparsity": {**CHANNELS, **sparsity, "channel_shrink": shrink},
            }
            if ensemble is not None:
                sections["ensemble"] = ensemble
                if ensemble["method"] == "dst_ensemble":
                    sections["train"]["member"] = 1
                else:
                    del sections["train"]["epochs"]
            cfg = tiny_config(root, out / name / str(shrink), **sections)
            summary, tracker, _ = run_loop(cfg)
            runs[shrink] = (summary, _losses(tracker), run_tickets(run_dir(cfg.train)))
        if rank != 0:
            continue
        _, masked_losses, masked_tickets = runs[False]
        slim, slim_losses, slim_tickets = runs[True]
        assert len(masked_losses) == len(slim_losses) > 4, name
        torch.testing.assert_close(slim_losses, masked_losses, rtol=1e-5, atol=0, msg=name)
        assert slim["sparse/channels/removed_fraction"] == 0.5, name
        assert len(masked_tickets) == len(slim_tickets) >= 1
        for want_path, got_path in zip(masked_tickets, slim_tickets, strict=True):
            got = load_ticket(got_path)
            assert got.channels is not None, f"{name}: the shrunk run's ticket records its cut"
            want_state, want_masks, want_record = slim_ticket(load_ticket(want_path))
            got_state, got_masks, got_record = slim_ticket(got)
            assert got_record["removed"] == want_record["removed"], name
            assert got_masks.keys() == want_masks.keys()
            for key, mask in want_masks.items():
                assert torch.equal(got_masks[key], mask), f"{name}: mask {key}"
            for key, value in want_state.items():
                torch.testing.assert_close(got_state[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize(
    "names",
    [[n for n in CASES if n.startswith("ddp")], [n for n in CASES if n.startswith("zero")]],
    ids=["ddp", "deepspeed"],
)
def test_shrinking_run_equals_its_masked_twin(names, tiny_mnist: Path, tmp_path: Path) -> None:
    run_workers(_compare_worker, 2, names, tiny_mnist, tmp_path)
