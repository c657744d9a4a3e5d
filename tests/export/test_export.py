"""`ft-dist export`: sparse artifact round trip, plain-PyTorch program, damage detection."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ft_dist.cli import main
from ft_dist.data.bundled import write_mnist
from ft_dist.data.config import DataConfig
from ft_dist.ensemble import metrics
from ft_dist.ensemble.data import split_data
from ft_dist.ensemble.evaluate import predict
from ft_dist.ensemble.tickets import build_member, find_tickets, load_ticket
from ft_dist.export import ArtifactError, export_run, read_artifact
from ft_dist.export.format import decode_member, encode_member
from ft_dist.models import build_model
from ft_dist.sparse import DynamicSparsity, SparsityConfig

NUM_MEMBERS = 3


def write_run(run_dir: Path, data_root: Path) -> None:
    """Three small-cnn tickets with DST masks, trained-looking BatchNorm statistics."""
    for member in range(1, NUM_MEMBERS + 1):
        torch.manual_seed(member)
        model = build_model("small-cnn", 10, 1, 28)
        masks = DynamicSparsity(model, None, SparsityConfig(density=0.2, seed=member)).masks
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(100 * member)
        meta = {
            "model": "small-cnn", "num_classes": 10, "in_channels": 1, "image_size": 28,
            "member": member, "phase": member, "epoch": member, "val_accuracy": float("nan"),
            "density": 0.2, "train_flops": 1e12 * member, "run_name": "export-run",
        }  # fmt: skip
        path = run_dir / "tickets" / f"ticket_{member:02d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "masks": masks, "meta": meta}, path)
    config = {"data": {"root": str(data_root), "loader_workers": 0}, "train": {"run_name": "r"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, shard_size=500, ood=False)
    return root


@pytest.fixture(scope="module")
def exported(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("export")
    write_run(base / "run", mnist_root)
    export_run(base / "run", base / "artifact")
    return base / "run", base / "artifact"


def test_members_read_back_exactly(exported: tuple[Path, Path]) -> None:
    run_dir, out = exported
    artifact = read_artifact(out)
    tickets = [load_ticket(p) for p in find_tickets(run_dir)[0]]
    assert len(artifact.members) == NUM_MEMBERS
    for member, ticket in zip(artifact.members, tickets, strict=True):
        assert member.masks.keys() == ticket.masks.keys()
        assert all(torch.equal(member.masks[n], ticket.masks[n]) for n in ticket.masks)
        for name, tensor in ticket.model_state.items():
            expected = tensor * ticket.masks[name] if name in ticket.masks else tensor
            assert member.model_state[name].dtype == tensor.dtype
            assert torch.equal(member.model_state[name], expected), name
    facts = artifact.preprocessing
    assert (facts["image_size"], facts["in_channels"]) == (28, 1)
    assert facts["mean"] == pytest.approx([0.1307], abs=0.01)
    assert artifact.manifest["num_classes"] == 10
    assert artifact.members[0].meta["val_accuracy"] is None  # NaN is not JSON


def test_program_matches_ensemble_evaluation(exported: tuple[Path, Path], mnist_root: Path) -> None:
    run_dir, out = exported
    test = split_data(DataConfig(root=str(mnist_root)), "test", batch_size=250)
    models = [build_member(load_ticket(p)) for p in find_tickets(run_dir)[0]]
    batches = list(itertools.islice(test.source(), 2))  # 500 of the 1000 test digits
    expected = metrics.ensemble_probs(predict(models, batches, test.normalization).member_probs)
    program = torch.export.load(str(out / "ensemble.pt2")).module()
    with torch.no_grad():
        got = torch.cat([program(images) for images, _ in batches])
    assert got.shape == (500, 10)
    torch.testing.assert_close(got.to(expected.dtype), expected, rtol=1e-5, atol=1e-6)


PLAIN_TORCH = """
import sys
sys.path.append(sys.argv[1])  # torch's site-packages only: no .pth, no editable ft_dist
try:
    import ft_dist
except ImportError:
    pass
else:
    raise SystemExit("ft_dist is importable: the test proves nothing")
import torch
program = torch.export.load("ensemble.pt2").module()
with torch.no_grad():
    torch.save(program(torch.load("images.pt")), "probs.pt")
print(sorted(m for m in sys.modules if m.startswith("ft_dist")))
"""


def test_program_runs_with_plain_pytorch(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = exported
    shutil.copy(out / "ensemble.pt2", tmp_path / "ensemble.pt2")
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.save(images, tmp_path / "images.pt")
    site = str(Path(torch.__file__).parent.parent)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PLAIN_TORCH, site],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    program = torch.export.load(str(out / "ensemble.pt2")).module()
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "probs.pt"), program(images))


def _damaged_copy(out: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy


def test_flipped_bytes_name_the_file(exported: tuple[Path, Path], tmp_path: Path) -> None:
    copy = _damaged_copy(exported[1], tmp_path)
    data = bytearray((copy / "member_02.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "member_02.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"member_02\.bin does not match its sha256"):
        read_artifact(copy)


def test_truncated_files_name_the_file(exported: tuple[Path, Path], tmp_path: Path) -> None:
    copy = _damaged_copy(exported[1], tmp_path)
    program = copy / "ensemble.pt2"
    program.write_bytes(program.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"ensemble\.pt2 is truncated .* 1000 bytes"):
        read_artifact(copy)
    manifest = copy / "artifact.json"
    manifest.write_bytes(manifest.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=r"artifact\.json does not match"):
        read_artifact(copy)
    (copy / "SHA256SUMS").unlink()
    with pytest.raises(ArtifactError, match=r"SHA256SUMS is missing"):
        read_artifact(copy)


def test_a_damaged_tensor_is_caught_even_with_matching_file_sums() -> None:
    """Defence in depth: per-tensor sha256 names the tensor when only the file sum is fixed."""
    state = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    masks = {"w": torch.rand(4, 4) < 0.5}
    data, index = encode_member(state, masks)
    state_back, masks_back = decode_member(data, index, "m.bin")
    torch.testing.assert_close(state_back["w"], state["w"] * masks["w"])
    assert torch.equal(masks_back["w"], masks["w"]) and "b" not in masks_back
    damaged = bytearray(data)
    damaged[index[1]["offset"]] ^= 1
    with pytest.raises(ArtifactError, match="m.bin: tensor b does not match"):
        decode_member(bytes(damaged), index, "m.bin")


def test_cli_export(exported: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run_dir, _ = exported
    out = tmp_path / "cli"
    assert main(["export", str(run_dir), "--out", str(out), "--no-program", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out)
    sizes = json.loads("\n".join(lines[:-1]))
    assert sizes["program_bytes"] is None and sizes["num_members"] == NUM_MEMBERS
    sparse = [*out.glob("member_*.bin"), out / "artifact.json", out / "SHA256SUMS"]
    assert sizes["sparse_bytes"] == sum(p.stat().st_size for p in sparse)
    shared = sum(p.stat().st_size for p in out.glob("member_*.safetensors"))
    assert sizes["safetensors_bytes"] == shared > 0
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "no such run" in capsys.readouterr().err


def test_force_replaces_only_what_an_export_writes(tmp_path: Path) -> None:
    from ft_dist.export.run import check_out, publish

    out, partial = tmp_path / "out", tmp_path / ".tmp-out"
    out.mkdir()
    partial.mkdir()
    ours = ["artifact.json", "SHA256SUMS", "ensemble.pt2", "member_01.bin", "member_12.bin"]
    theirs = ["notes.txt", "member_01.txt", "model.bin"]
    for name in ours + theirs:
        (out / name).write_text("old")
    for name in ours[:4]:
        (partial / name).write_text("new")
    with pytest.raises(ValueError, match="not empty"):
        check_out(out, force=False)
    check_out(out, force=True)
    publish(partial, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(theirs + ours[:4])
    assert {(out / n).read_text() for n in ours[:4]} == {"new"} and not partial.exists()


def test_a_failed_export_leaves_the_earlier_one_and_no_debris(
    mnist_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import ft_dist.export.run as run

    run_dir, out = tmp_path / "run", tmp_path / "export"
    write_run(run_dir, mnist_root)
    export_run(run_dir, out, program=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("the program cannot be exported")

    monkeypatch.setattr(run, "export_program", broken)
    with pytest.raises(RuntimeError, match="cannot be exported"):
        export_run(run_dir, out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(RuntimeError):
        export_run(run_dir, tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
@pytest.mark.heavy
def test_resnet50_three_erk_tickets_take_at_most_080_of_one_dense() -> None:
    """Issue 11 goal: M = 3 ERK d = 0.2 ResNet-50 tickets <= 0.8 x one dense state_dict."""
    total = 0
    for member in range(3):
        torch.manual_seed(member)
        model = build_model("resnet50", 1000, 3, 224)
        config = SparsityConfig(density=0.2, sparse_init="erk", seed=member)
        masks = DynamicSparsity(model, None, config).masks
        total += len(encode_member(model.state_dict(), masks)[0])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert total / buffer.tell() <= 0.8


def test_full_width_members_are_not_packed_by_default(exported: tuple[Path, Path]) -> None:
    """Packing pays for slim members only: an export of unstructured tickets runs them one
    after another and says why (export/run.py FULL_WIDTH_NOT_PACKED)."""
    _, out = exported
    program = json.loads((out / "artifact.json").read_text())["program"]
    assert program["form"] == "separate" and "full width" in program["packing_skipped"]
