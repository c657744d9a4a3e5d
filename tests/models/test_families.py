"""Contract tests over the model-family table: a family added to `MODEL_FAMILIES` without a
case here fails `test_every_family_has_a_case`; each case builds, gets its planned per-layer
densities, trains (the loop every Ray worker runs), writes a ticket, evaluates and exports
through the CLI, and the exported program matches the masked tickets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ft_dist.cli import main
from ft_dist.config import save_config
from ft_dist.ensemble.tickets import build_member, load_ticket
from ft_dist.layout import eval_dir, run_dir, run_tickets
from ft_dist.models import MODEL_FAMILIES, build_model_from_config, model_family
from ft_dist.models.config import with_builder_source
from ft_dist.private_api import batch_norm_base
from ft_dist.sparse.allocation import active_counts, layer_densities, maskable_parameters
from ft_dist.sparse.flops import allocated_flops_report
from ft_dist.train.loop import train
from ft_dist.train.session import LocalSession
from tests.train.conftest import NullTracker, tiny_config

BUILDER = Path(__file__).with_name("attention_builder.py")
SMALL_VIT = {"patch_size": 7, "depth": 1, "embed_dim": 48, "num_heads": 3}
# name -> (model.name, model.kwargs, weights the default rule must make sparse)
CASES = {
    "small-cnn": ("small-cnn", {}, {"features.0.weight", "classifier.3.weight"}),
    "timm-vit": (
        "timm:vit_tiny_patch16_224",
        SMALL_VIT,
        {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc2.weight"},
    ),
    "timm-cnn": ("timm:resnet18", {}, {"conv1.weight", "layer4.1.conv2.weight", "fc.weight"}),
    "torchvision": ("torchvision:resnet18", {}, {"conv1.weight", "fc.weight"}),
    "file-builder": (
        f"{BUILDER}:build",
        {"dim": 32},
        {"embed.weight", "attention.in_proj_weight", "attention.out_proj.weight", "head.weight"},
    ),
}
DENSE_ALWAYS = ("position", "pos_embed", "cls_token", "norm", "bias", "bn")


def test_every_family_has_a_case() -> None:
    covered = {model_family(name).name for name, _, _ in CASES.values()}
    assert covered == {family.name for family in MODEL_FAMILIES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_rule_and_planned_densities(case: str) -> None:
    name, kwargs, must_be_sparse = CASES[case]
    cfg = tiny_config(Path("."), Path("."), model={"name": name, "kwargs": kwargs}).model
    cfg = cfg.resolved(num_classes=10, in_channels=1, image_size=28)
    model = build_model_from_config(with_builder_source(cfg, Path(".")))
    sparse = maskable_parameters(model)
    assert must_be_sparse <= sparse.keys()
    assert not [n for n in sparse if any(part in n for part in DENSE_ALWAYS)]
    shapes = {n: tuple(p.shape) for n, p in sparse.items()}
    densities = layer_densities(shapes, 0.2, "erk")
    counts = active_counts(shapes, densities)
    total = sum(math.prod(s) for s in shapes.values())
    assert abs(sum(counts.values()) - 0.2 * total) <= len(counts)  # ERK keeps the budget
    with torch.device("meta"):
        meta_model = build_model_from_config(with_builder_source(cfg, Path(".")))
    report = allocated_flops_report(meta_model, (1, 28, 28), 0.2)
    priced = {layer.name for layer in report.layers}
    assert priced == sparse.keys()
    assert all(layer.dense_flops > 0 for layer in report.layers)  # every weight is found
    assert 0.0 < report.forward_flops_ratio < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_family_trains_tickets_evaluates_and_exports(
    case: str, tiny_mnist: Path, tmp_path: Path
) -> None:
    name, kwargs, _ = CASES[case]
    cfg = tiny_config(
        tiny_mnist,
        tmp_path / "runs",
        model={"name": name, "kwargs": kwargs},
        train={"epochs": 1, "ticket": "last"},
    )
    cfg = cfg.model_copy(update={"model": with_builder_source(cfg.model, Path("."))})
    with LocalSession(run_dir(cfg.train), device="cpu") as session:
        summary = train(cfg, session, NullTracker())
    run = run_dir(cfg.train)
    save_config(cfg, run / "config.yaml")
    [ticket_file] = run_tickets(run)
    assert summary["steps"] == 8 and summary["train_flops"] > 0

    ticket = load_ticket(ticket_file)
    model = build_model_from_config(
        cfg.model.resolved(num_classes=10, in_channels=1, image_size=28)
    )
    shapes = {n: tuple(p.shape) for n, p in maskable_parameters(model).items()}
    planned = active_counts(shapes, layer_densities(shapes, 0.2, "erk"))
    assert {n: int(m.sum()) for n, m in ticket.masks.items()} == planned
    for mask_name, mask in ticket.masks.items():
        assert torch.count_nonzero(ticket.model_state[mask_name][~mask]) == 0

    assert main(["evaluate", str(run)]) == 0
    report = json.loads((eval_dir(run) / "report.json").read_text())
    assert 0.0 <= report["ensemble"]["test"]["accuracy"] <= 1.0

    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    norms = sum(isinstance(m, batch_norm_base()) for m in model.modules())
    program_facts = json.loads((out / "artifact.json").read_text())["program"]
    assert program_facts["folded_norms"] == [norms]  # every BatchNorm here follows a conv
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    program = torch.export.load(str(out / "ensemble.pt2")).module()
    member = build_member(ticket)
    mean = torch.tensor(json.loads((out / "artifact.json").read_text())["preprocessing"]["mean"])
    std = torch.tensor(json.loads((out / "artifact.json").read_text())["preprocessing"]["std"])
    with torch.no_grad():
        expected = member((images - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)).softmax(dim=1)
        torch.testing.assert_close(program(images), expected, rtol=1e-4, atol=1e-5)

    # The program needs neither ft_dist nor the user's builder (nor timm).
    script = (
        "import sys, torch\n"
        "p = torch.export.load('ensemble.pt2').module()\n"
        "assert p(torch.rand(2, 1, 28, 28)).shape == (2, 10)\n"
        "bad = [m for m in sys.modules if m.startswith(('ft_dist', 'timm', 'attention_builder'))]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=out, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
