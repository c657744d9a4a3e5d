"""`ft-dist export` of channel-level DST tickets: removed channels physically cut, the rest
of the unstructured sparsity kept, the program's probabilities equal to evaluating the
masked tickets, and a tampered artifact still refused with a clear error."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from ft_dist.cli import main
from ft_dist.data.config import DataConfig
from ft_dist.ensemble import metrics
from ft_dist.ensemble.data import split_data
from ft_dist.ensemble.evaluate import predict
from ft_dist.ensemble.tickets import build_member, find_tickets, load_ticket
from ft_dist.export import ArtifactError, export_run, read_artifact
from ft_dist.models import build_model
from ft_dist.sparse import DynamicSparsity, SparsityConfig
from tests.export.test_export import mnist_root  # noqa: F401  (fixture)

NUM_MEMBERS = 3


def channel_ticket(member: int) -> dict:
    """A small-cnn ticket after a few channel-level DST steps on random digits-like data."""
    torch.manual_seed(member)
    model = build_model("small-cnn", 10, 1, 28)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config = SparsityConfig(
        density=0.2, update_every_steps=2, channel_sparsity=0.5, channel_end_step=4,
        growth="random", seed=member,
    )  # fmt: skip
    sparsity = DynamicSparsity(model, optimizer, config)
    generator = torch.Generator().manual_seed(member)
    for _ in range(6):
        images = torch.rand(16, 1, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        sparsity.step()
    assert sparsity.channels.num_removed() == 112
    meta = {
        "model": "small-cnn", "num_classes": 10, "in_channels": 1, "image_size": 28,
        "member": member, "phase": member, "epoch": 1, "val_accuracy": 0.5,
        "density": 0.2, "train_flops": 1e12, "run_name": "slim-run",
    }  # fmt: skip
    return {"model": model.state_dict(), "masks": sparsity.masks, "meta": meta}


@pytest.fixture(scope="module")
def slim_export(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    base = tmp_path_factory.mktemp("slim")
    run = base / "run"
    for member in range(1, NUM_MEMBERS + 1):
        path = run / "tickets" / f"ticket_{member:02d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(channel_ticket(member), path)
    config = {"data": {"root": str(mnist_root), "loader_workers": 0}, "train": {"run_name": "r"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    sizes = export_run(run, base / "artifact")
    return run, base / "artifact", sizes


def test_removed_channels_are_cut_and_the_rest_stays_sparse(slim_export) -> None:
    run, out, sizes = slim_export
    artifact = read_artifact(out)
    assert artifact.manifest["version"] == 2 and sizes["slim"]
    for member, path in zip(artifact.members, find_tickets(run)[0], strict=True):
        ticket = load_ticket(path)
        removed = member.channels["removed"]
        assert sum(len(v) for v in removed.values()) >= 112  # all that DST removed
        kept = member.channels["kept"]
        conv = member.model_state["features.0.weight"]
        assert conv.shape[0] == kept["features.0"]
        assert sum(kept.values()) <= sum(member.channels["size"].values()) - 112
        assert member.model_state["classifier.1.weight"].shape == (
            kept["classifier.1"],
            kept["features.4"] * 7 * 7,  # the flatten after the last conv
        )
        assert member.model_state["features.1.running_mean"].shape == (kept["features.0"],)
        assert member.model_state["features.4.weight"].shape[:2] == (
            kept["features.4"],
            kept["features.0"],
        )
        # Unstructured sparsity inside the kept channels stays in the bitmask encoding.
        entry = next(t for t in artifact.manifest["members"][0]["tensors"] if t["masked"])
        assert entry["encoding"] in ("bitmask", "dense")
        fc = member.masks["classifier.1.weight"]
        assert fc.shape == member.model_state["classifier.1.weight"].shape
        assert member.channels["parameters"] < member.channels["full_parameters"]
        # Same function as the masked ticket.
        images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(
                member.model()(images), build_member(ticket)(images), rtol=1e-5, atol=1e-6
            )
    assert sizes["member_parameters"][0] < sizes["full_parameters"]


def test_program_matches_evaluating_the_masked_tickets(slim_export, mnist_root: Path) -> None:  # noqa: F811
    run, out, _ = slim_export
    test = split_data(DataConfig(root=str(mnist_root)), "test", batch_size=250)
    models = [build_member(load_ticket(p)) for p in find_tickets(run)[0]]
    batches = list(itertools.islice(test.source(), 2))
    expected = metrics.ensemble_probs(predict(models, batches, test.normalization).member_probs)
    program = torch.export.load(str(out / "ensemble.pt2")).module()
    with torch.no_grad():
        got = torch.cat([program(images) for images, _ in batches])
    torch.testing.assert_close(got.to(expected.dtype), expected, rtol=1e-5, atol=1e-6)
    # The program holds the slim weights: far fewer numbers than M dense models.
    program_params = sum(
        t.numel() for t in torch.export.load(str(out / "ensemble.pt2")).state_dict.values()
    )
    dense = sum(p.numel() for p in build_model("small-cnn", 10, 1, 28).parameters())
    assert program_params < NUM_MEMBERS * dense


def test_tampered_channel_record_is_refused(slim_export, tmp_path: Path) -> None:
    _, out, _ = slim_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "artifact.json").read_text())
    group = next(iter(manifest["members"][0]["channels"]["removed"]))
    manifest["members"][0]["channels"]["removed"][group].pop()
    (copy / "artifact.json").write_text(json.dumps(manifest, indent=1) + "\n")
    with pytest.raises(ArtifactError, match=r"artifact\.json does not match its sha256"):
        read_artifact(copy)


def test_cli_prints_the_kept_channels(slim_export, tmp_path: Path, capsys) -> None:
    run, _, _ = slim_export
    out = tmp_path / "cli"
    assert main(["export", str(run), "--out", str(out), "--no-program"]) == 0
    text = capsys.readouterr().out
    assert "kept channels of member 1: " in text and "features.4 " in text
    assert (
        main(
            [
                "export",
                str(run),
                "--out",
                str(tmp_path / "full"),
                "--no-slim",
                "--json",
                "--no-program",
            ]
        )
        == 0
    )
    sizes = json.loads("\n".join(capsys.readouterr().out.strip().splitlines()[:-1]))
    assert not sizes["slim"]
    full = read_artifact(tmp_path / "full").members[0]
    assert full.model_state["features.0.weight"].shape[0] == 32


def test_program_is_packed_by_default_and_separate_on_request(slim_export, tmp_path: Path) -> None:
    run, out, sizes = slim_export
    facts = read_artifact(out).manifest["program"]
    assert sizes["program_form"] == facts["form"] == "packed"
    assert facts["max_abs_difference"] <= 1e-5 and facts["folded_norms"] == [2, 2, 2]
    separate_out = tmp_path / "separate"
    argv = ["export", str(run), "--out", str(separate_out), "--program", "separate", "--json"]
    assert main(argv) == 0
    separate_facts = read_artifact(separate_out).manifest["program"]
    assert separate_facts["form"] == "separate" and "packed_parameters" not in separate_facts
    packed = torch.export.load(str(out / "ensemble.pt2")).module()
    separate = torch.export.load(str(separate_out / "ensemble.pt2")).module()
    for batch in (1, 7):  # same call signature, dynamic batch
        images = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            got, expected = packed(images), separate(images)
        assert got.shape == (batch, 10)
        assert float((got - expected).abs().max()) <= 1e-5
