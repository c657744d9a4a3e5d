"""member_XX.safetensors + load_ensemble.py: the ensemble rebuilt with torch, safetensors and
the model's own library gives `ft-dist evaluate`'s probabilities, for unstructured tickets,
for tickets cut while training (widened back to full width) and, without ft_dist
importable at all, for a model built by the user's own file."""

from __future__ import annotations

import hashlib
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
from safetensors import safe_open
from safetensors.torch import load as load_safetensors

from ft_dist.data.config import DataConfig
from ft_dist.ensemble import metrics
from ft_dist.ensemble.data import split_data
from ft_dist.ensemble.evaluate import predict
from ft_dist.ensemble.tickets import build_member, find_tickets, load_ticket
from ft_dist.export import ArtifactError, export_run, read_artifact
from ft_dist.export.load_ensemble import load_ensemble, read_member, unpack_mask
from ft_dist.export.sharing import encode
from ft_dist.models import build_model
from ft_dist.sparse import DynamicSparsity, SparsityConfig
from tests.export.test_export import NUM_MEMBERS, exported, mnist_root  # noqa: F401  (fixtures)


def evaluate_probs(run_dir: Path, data_root: Path, batches: int = 2) -> tuple:
    """(raw test batches, the ensemble's probabilities on them as `ft-dist evaluate` computes
    them: its members, its normalisation, its `predict`)."""
    test = split_data(DataConfig(root=str(data_root)), "test", batch_size=250)
    models = [build_member(load_ticket(p)) for p in find_tickets(run_dir)[0]]
    data = list(itertools.islice(test.source(), batches))
    probs = predict(models, data, test.normalization).member_probs
    return data, metrics.ensemble_probs(probs)


def loaded_probs(out: Path, build, data: list) -> torch.Tensor:
    ensemble = load_ensemble(out, build)
    return torch.cat([ensemble(images) for images, _ in data]).double()


def test_the_loader_gives_evaluate_probabilities(exported, mnist_root: Path) -> None:  # noqa: F811
    run_dir, out = exported
    data, expected = evaluate_probs(run_dir, mnist_root)
    got = loaded_probs(out, lambda: build_model("small-cnn", 10, 1, 28), data)
    assert got.shape == (500, 10)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_masks_are_stored_bit_packed_with_the_active_values(exported) -> None:  # noqa: F811
    run_dir, out = exported
    ticket = load_ticket(find_tickets(run_dir)[0][0])
    state, meta, masks = read_member(out / "member_01.safetensors")
    assert masks.keys() == {n for n, m in ticket.masks.items() if not m.all()}
    with safe_open(str(out / "member_01.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
        for name, mask in masks.items():
            bits = handle.get_tensor(f"{name}:mask")
            assert bits.dtype == torch.uint8 and bits.numel() == (mask.numel() + 7) // 8
            values = handle.get_tensor(f"{name}:values")
            assert values.numel() == int(ticket.masks[name].sum()) and name not in names
    for name, tensor in ticket.model_state.items():
        expected = tensor * ticket.masks[name] if name in ticket.masks else tensor
        assert torch.equal(state[name], expected), name
    assert all(torch.equal(masks[n], ticket.masks[n]) for n in masks)
    assert meta["mean"] == pytest.approx([0.1307], abs=0.01) and meta["density"] == 0.2
    # today's .bin members (same bit-packed encoding) and the safetensors take about the
    # same bytes; both far below a dense ticket .pt
    manifest = read_artifact(out).manifest
    for shared, member in zip(manifest["safetensors"], manifest["members"], strict=True):
        assert shared["nbytes"] < member["nbytes"] + 4096
        assert shared["nbytes"] < 0.3 * ticket.path.stat().st_size


def test_unpack_mask_inverts_numpy_packbits() -> None:
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 5, 7, generator=generator) < 0.3  # 105 bits: a partial last byte
    tensors = load_safetensors(encode({"w": torch.randn(3, 5, 7)}, {"w": mask}, {}))
    assert torch.equal(unpack_mask(tensors["w:mask"], [3, 5, 7]), mask)
    assert tensors["w:values"].numel() == int(mask.sum())


def test_a_damaged_safetensors_member_is_refused(exported, tmp_path: Path) -> None:  # noqa: F811
    copy = tmp_path / "copy"
    shutil.copytree(exported[1], copy)
    data = bytearray((copy / "member_03.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (copy / "member_03.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"member_03\.safetensors does not match its sha256"):
        read_artifact(copy)


def test_a_network_of_other_shapes_is_one_clear_error(exported) -> None:  # noqa: F811
    with pytest.raises(ValueError, match=r"member_01\.safetensors does not fit the network"):
        load_ensemble(exported[1], lambda: build_model("small-cnn", 10, 3, 28))


# --------------------------------------------------------------------------- cut while training
def cut_ticket(member: int) -> dict:
    """A small-cnn ticket of a shrinking run: channels cut out of the weights it saved."""
    torch.manual_seed(member)
    model = build_model("small-cnn", 10, 1, 28)
    config = SparsityConfig(
        density=0.3, update_every_steps=1, growth="random", channel_sparsity=0.5,
        channel_end_step=1, channel_allocation="uniform", seed=member,
    )  # fmt: skip
    sparsity = DynamicSparsity(model, None, config, input_shape=(1, 28, 28))
    sparsity.step()
    sparsity.cut_channels_()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    meta = {
        "model": "small-cnn", "num_classes": 10, "in_channels": 1, "image_size": 28,
        "member": member, "density": 0.3, "run_name": "cut-run",
    }  # fmt: skip
    removed = sparsity.channels.cut_record()
    return {"model": model.state_dict(), "masks": sparsity.masks, "meta": meta,
            "channels": {"removed": removed}}  # fmt: skip


def test_tickets_cut_while_training_load_at_full_width(mnist_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    for member in (1, 2):
        path = run / "tickets" / f"ticket_{member:02d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cut_ticket(member), path)
    config = {"data": {"root": str(mnist_root), "loader_workers": 0}, "train": {"run_name": "r"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    export_run(run, tmp_path / "out", program=False)
    full = build_model("small-cnn", 10, 1, 28).state_dict()
    ticket = load_ticket(find_tickets(run)[0][0])
    state, _, masks = read_member(tmp_path / "out" / "member_01.safetensors")
    assert {n: t.shape for n, t in state.items()} == {n: t.shape for n, t in full.items()}
    cut = [n for n, t in ticket.model_state.items() if t.shape != full[n].shape]
    assert "features.0.weight" in cut and "features.1.running_var" in cut
    gone = ticket.removed_channels()["features.0"]  # cut channels: back as inactive zeros
    assert gone and not masks["features.0.weight"][gone].any()
    assert not state["features.0.weight"][gone].any() and not state["features.1.weight"][gone].any()
    kept = [c for c in range(full["features.0.weight"].shape[0]) if c not in gone]
    assert torch.equal(
        state["features.1.running_var"][kept], ticket.model_state["features.1.running_var"]
    )
    data, expected = evaluate_probs(run, mnist_root, batches=1)
    got = loaded_probs(tmp_path / "out", lambda: build_model("small-cnn", 10, 1, 28), data)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- no ft_dist at all
BUILDER = """
from torch import nn


def build(num_classes, in_channels, image_size):
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )
"""

PLAIN = """
import sys
sys.path[:0] = sys.argv[1:]  # torch's site-packages, the export, the builder: no ft_dist
try:
    import ft_dist
except ImportError:
    pass
else:
    raise SystemExit("ft_dist is importable: the test proves nothing")
import torch
from load_ensemble import load_ensemble
from my_model import build

ensemble = load_ensemble(sys.argv[2], lambda: build(num_classes=10, in_channels=1, image_size=28))
torch.save(ensemble(torch.load("images.pt")), "probs.pt")
print(sorted(m for m in sys.modules if m.startswith("ft_dist")))
"""


def test_a_user_file_model_loads_without_ft_dist(mnist_root: Path, tmp_path: Path) -> None:  # noqa: F811
    builder = tmp_path / "code" / "my_model.py"
    builder.parent.mkdir()
    builder.write_text(BUILDER)
    spec = f"{builder}:build"
    run = tmp_path / "run"
    for member in (1, 2):
        torch.manual_seed(member)
        model = build_model(spec, 10, 1, 28)
        masks = DynamicSparsity(model, None, SparsityConfig(density=0.4, seed=member)).masks
        meta = {
            "model": spec, "num_classes": 10, "in_channels": 1, "image_size": 28,
            "member": member, "density": 0.4,
            "model_source_sha256": hashlib.sha256(BUILDER.encode()).hexdigest(),
        }  # fmt: skip
        path = run / "tickets" / f"ticket_{member:02d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "masks": masks, "meta": meta}, path)
    config = {"data": {"root": str(mnist_root), "loader_workers": 0}, "train": {"run_name": "r"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    export_run(run, out, program=False)
    card = (out / "README.md").read_text()
    assert "from my_model import build" in card
    assert "build(num_classes=10, in_channels=1, image_size=28)" in card
    data, expected = evaluate_probs(run, mnist_root, batches=1)
    images = data[0][0][:64]
    buffer = io.BytesIO()
    torch.save(images, buffer)
    (tmp_path / "images.pt").write_bytes(buffer.getvalue())
    site = str(Path(torch.__file__).parent.parent)
    paths = [site, str(out), str(builder.parent)]
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PLAIN, *paths],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    got = torch.load(tmp_path / "probs.pt")
    torch.testing.assert_close(got.double(), expected[:64], rtol=1e-5, atol=1e-6)


def test_the_loader_imports_nothing_but_torch_and_safetensors() -> None:
    import ast

    import ft_dist.export.load_ensemble as module

    tree = ast.parse(Path(module.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "json", "math", "collections", "pathlib", "torch", "safetensors"}


def test_no_safetensors_leaves_them_out(exported, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    sizes = export_run(exported[0], out, program=False, safetensors=False)
    assert sizes["safetensors_bytes"] is None
    assert not list(out.glob("*.safetensors")) and not (out / "load_ensemble.py").exists()
    manifest = json.loads((out / "artifact.json").read_text())
    assert "safetensors" not in manifest and (out / "README.md").is_file()
    assert len(manifest["members"]) == NUM_MEMBERS
