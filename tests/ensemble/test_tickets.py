"""Tickets are read weights-only; a file that is not one is a one-line error, in
`ft-dist evaluate` and `ft-dist export` alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ft_dist.cli import main
from ft_dist.ensemble.tickets import load_ticket
from tests.ensemble.test_cli_evaluate import _write_run as write_run


class Payload:
    """Unpickling this would run a shell command (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_run(tmp_path: Path, data_root: Path) -> tuple[Path, Path]:
    run, marker = tmp_path / "run", tmp_path / "pwned"
    write_run(run, data_root, num_members=1)
    evil = run / "tickets" / "ticket_02.pt"
    torch.save({"model": {}, "masks": {}, "meta": Payload(marker)}, evil)
    return run, marker


def test_load_ticket_refuses_pickled_objects_in_one_line(tmp_path: Path, tiny_mnist: Path) -> None:
    run, marker = _malicious_run(tmp_path, tiny_mnist)
    with pytest.raises(ValueError) as raised:
        load_ticket(run / "tickets" / "ticket_02.pt")
    message = str(raised.value)
    assert "\n" not in message and "is not a trusted ticket" in message
    assert "weights_only" not in message and not marker.exists()
    (run / "tickets" / "ticket_03.pt").write_bytes(b"garbage, not a zip or pickle")
    with pytest.raises(ValueError, match="not a readable ticket") as raised:
        load_ticket(run / "tickets" / "ticket_03.pt")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_cli_names_an_untrusted_ticket_in_one_line(
    tmp_path: Path, tiny_mnist: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    run, marker = _malicious_run(tmp_path, tiny_mnist)
    extra = ["--no-wandb"] if command == "evaluate" else ["--out", str(tmp_path / "out")]
    assert main([command, str(run), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"ft-dist {command}: error: ")
    assert "not a trusted ticket" in err[0]
    assert "weights_only" not in err[0] and not marker.exists()


def test_a_slim_ticket_counts_against_the_full_architecture(tmp_path) -> None:
    """A ticket cut while training (channel_shrink) loads into the cut architecture, and its
    densities (FLOPs, parameters against the dense model) are over the full layers."""
    import torch

    from ft_dist.ensemble.tickets import build_member, load_ticket
    from ft_dist.models import build_model
    from ft_dist.sparse import DynamicSparsity, SparsityConfig

    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, 28)
    config = SparsityConfig(
        density=0.2, update_every_steps=1, growth="random", channel_sparsity=0.5,
        channel_end_step=1, channel_allocation="uniform",
    )  # fmt: skip
    sparsity = DynamicSparsity(model, None, config, input_shape=(1, 28, 28))
    sparsity.step()
    sparsity.cut_channels_()
    meta = {
        "model": "small-cnn", "num_classes": 10, "in_channels": 1, "image_size": 28,
        "member": 1, "density": 0.2,
    }  # fmt: skip
    path = tmp_path / "ticket_01.pt"
    removed = sparsity.channels.cut_record()
    masks = sparsity.masks
    torch.save({"model": model.state_dict(), "masks": masks, "meta": meta,
                "channels": {"removed": removed}}, path)  # fmt: skip
    ticket = load_ticket(path)
    member = build_member(ticket)
    assert member(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    full = {n: p.numel() for n, p in build_model("small-cnn", 10, 1, 28).named_parameters()}
    assert ticket.full_sizes() == full
    for name, density in ticket.full_densities().items():
        assert density == float(masks[name].sum()) / full[name]
        assert density < ticket.layer_densities()[name] or name == "classifier.3.weight"
