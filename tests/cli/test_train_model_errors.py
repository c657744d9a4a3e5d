"""`ft-dist train` with a model that cannot work: one line naming model.name (or
model.kwargs) and the fix, before any Ray worker starts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import ray

from ft_dist.cli import main
from tests.cli.test_train_errors import write_config

BUILDERS = {
    "returns_int.py": "def build(num_classes, in_channels, image_size):\n    return 42\n",
    "wrong_classes.py": """
        from torch import nn

        def build(num_classes, in_channels, image_size):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 2))
        """,
    "nothing_sparse.py": """
        import torch
        from torch import nn

        class Bias(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.logits = nn.Parameter(torch.zeros(num_classes))

            def forward(self, images):
                return images.flatten(1)[:, :1] * 0 + self.logits

        def build(num_classes, in_channels, image_size):
            return Bias(num_classes)
        """,
    "needs_more.py": "def build(depth, num_classes, in_channels, image_size):\n    pass\n",
}
# (model.name, model.kwargs, what the one line must say); FILE = the builders dir
CASES = {
    "unknown timm name": (
        "timm:vit_tiny_patch16",
        {},
        "timm has no model 'vit_tiny_patch16'; close matches: vit_tiny_patch16_384",
    ),
    "missing module": ("no_such_pkg.models:build", {}, "cannot import 'no_such_pkg.models'"),
    "missing file": ("FILE/absent.py:build", {}, "absent.py not found"),
    "missing callable": ("FILE/returns_int.py:make", {}, "has no callable 'make'; callables there: build"),
    "not a module": ("FILE/returns_int.py:build", {}, "the builder returned int, not a torch nn.Module"),
    "wrong output": ("FILE/wrong_classes.py:build", {}, "outputs (2, 2) for a batch of 2, not (2, 3)"),
    "nothing to sparsify": ("FILE/nothing_sparse.py:build", {}, "nothing to sparsify"),
    "builder signature": ("FILE/needs_more.py:build", {}, "missing a required argument: 'depth'"),
    "unknown kwarg": ("small-cnn", {"width": 2}, "model.kwargs ['width']: small-cnn does not take"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_is_one_line_before_any_worker(
    case: str, dataset: Path, tmp_path: Path, capsys
) -> None:
    builders = tmp_path / "builders"
    builders.mkdir()
    for name, text in BUILDERS.items():
        (builders / name).write_text(textwrap.dedent(text))
    name, kwargs, expected = CASES[case]
    config = write_config(tmp_path, dataset)
    overrides = [f"model.name={name.replace('FILE', str(builders))}", f"model.kwargs={kwargs}"]
    assert main(["train", str(config), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ft-dist train: error: ") and "\n" not in err, err
    assert expected in err, err
    assert not ray.is_initialized()
