"""A small slice of the real bundled MNIST digits, written as shards with ft_dist's writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ft_dist.config import RunConfig, config_from_dict
from ft_dist.data.bundled import MNIST_CLASSES, encode_png, load_mnist_5k
from ft_dist.data.shards import prepare_split_dir, write_split

# (split, samples, shard size): 256 training digits = 8 steps of 32 on one rank.
SPLITS = (("train", 256, 32), ("val", 48, 16), ("test", 48, 16))


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, labels = load_mnist_5k()
    order = np.random.default_rng(0).permutation(len(labels))
    root = tmp_path_factory.mktemp("tiny_mnist")
    start = 0
    for split, count, shard_size in SPLITS:
        pick = order[start : start + count]
        start += count
        write_split(
            prepare_split_dir(root, split, overwrite=False),
            encode_png(images[pick], labels[pick]),
            classes=MNIST_CLASSES,
            labeled=True,
            shard_size=shard_size,
            info={"recipe": "mnist"},
        )
    return root


def tiny_config(root: Path, out: Path, **sections: dict) -> RunConfig:
    """small-cnn DST on the tiny MNIST slice; ``sections`` update the defaults per section."""
    base: dict[str, dict] = {
        "model": {"name": "small-cnn"},
        "data": {
            "root": str(root),
            "batch_size_per_worker": 32,
            "loader_workers": 0,
            "shuffle_buffer": 64,
            "verify": "size",
        },
        "sparsity": {"density": 0.2, "update_every_steps": 3, "drop_fraction": 0.5},
        "optim": {"lr": 0.05, "weight_decay": 5e-4},
        "train": {"epochs": 2, "output_dir": str(out), "run_name": "tiny", "log_every_steps": 4},
        "tracking": {"wandb": "disabled"},
    }
    if "ensemble" in sections:
        del base["train"]["epochs"]  # EDST derives its epochs from the phase plan
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_from_dict(base)


class NullTracker:
    """Records what the loop logs (the real NullTracker/W&B tracker live in ft_dist.tracking)."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []
        self.summaries: list[dict] = []
        self.notes: list[str] = []

    def set_total(self, total_steps: int, num_epochs: int | None = None) -> None:
        self.total_steps = total_steps

    def log(self, metrics: dict, step: int) -> None:
        self.logged.append((step, dict(metrics)))

    def summary(self, metrics: dict) -> None:
        self.summaries.append(dict(metrics))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self, exit_code: int = 0) -> None:
        pass
