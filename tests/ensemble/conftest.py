"""Tiny real tickets (small-cnn with DST masks) and in-memory image batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ft_dist.models import build_model
from ft_dist.sparse import DynamicSparsity, SparsityConfig
from tests.train.conftest import tiny_mnist  # noqa: F401  (re-exported as a fixture here)

NUM_CLASSES = 4
IMAGE_SIZE = 8


def make_ticket(path: Path, member: int, density: float = 0.3, train_flops: float = 1e9) -> Path:
    """Write a ticket in the shared contract's format from a freshly initialised model."""
    torch.manual_seed(100 + member)
    model = build_model("small-cnn", NUM_CLASSES, 1, IMAGE_SIZE)
    sparsity = DynamicSparsity(model, None, SparsityConfig(density=density, seed=member))
    ticket = {
        "model": model.state_dict(),
        "masks": {name: mask.clone() for name, mask in sparsity.masks.items()},
        "meta": {
            "model": "small-cnn",
            "num_classes": NUM_CLASSES,
            "in_channels": 1,
            "image_size": IMAGE_SIZE,
            "member": member,
            "phase": member,
            "epoch": 10 * member,
            "val_accuracy": 0.5,
            "density": density,
            "train_flops": train_flops * member,
            "run_name": "test-run",
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ticket, path)
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """An EDST-like RUN_DIR with three tickets."""
    root = tmp_path / "run"
    for member in (1, 2, 3):
        make_ticket(root / "tickets" / f"ticket_{member:02d}.pt", member)
    return root


def image_batches(num: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Raw [0, 1] images with labels, split into batches (the last one short)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(num, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (num,), generator=generator)
    return list(zip(images.split(batch_size), labels.split(batch_size), strict=True))
