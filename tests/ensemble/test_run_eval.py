"""`ft-dist evaluate` checks its shards as `train` does (data.verify): test and OoD sets."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from ft_dist.cli import main
from tests.ensemble.test_cli_evaluate import _write_run as write_run


def change_a_label(shard: Path) -> None:
    """Rewrite one digit of the first .cls member in place: same size, another label."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".cls"))
        offset = member.offset_data
    with open(shard, "r+b") as stream:
        stream.seek(offset)
        digit = stream.read(1)
        stream.seek(offset)
        stream.write(b"1" if digit != b"1" else b"2")


@pytest.fixture
def data_and_run(tiny_mnist: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(tiny_mnist, root)
    run = tmp_path / "run"
    write_run(run, root, num_members=1)
    return root, run


def _evaluate(run: Path, *extra: str) -> int:
    return main(["evaluate", str(run), "--no-wandb", "--out", str(run.parent / "eval"), *extra])


def test_tampered_test_shard_is_an_error_naming_it(data_and_run, capsys) -> None:
    root, run = data_and_run
    assert _evaluate(run) == 0  # verified once, recorded in the stamp
    capsys.readouterr()
    shard = sorted((root / "test").glob("*.tar"))[1]
    change_a_label(shard)
    assert _evaluate(run) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"shard {shard} does not match the sha256 in its manifest" in line, line


def test_tampered_ood_shard_is_an_error_naming_it(data_and_run, capsys) -> None:
    root, run = data_and_run
    ood = root.parent / "ood"
    shutil.copytree(root / "val", ood / "val")
    shard = sorted((ood / "val").glob("*.tar"))[0]
    change_a_label(shard)
    assert _evaluate(run, "--ood", str(ood / "val")) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"shard {shard} does not match the sha256" in line, line
