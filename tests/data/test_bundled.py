"""The bundled MNIST digits and the OoD crops, as written by `ft-dist shards mnist`."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ft_dist.cli import main
from ft_dist.data import read_manifest
from ft_dist.data.bundled import load_mnist_5k, stratified_split


def read_split(root: Path, split: str) -> list[tuple[np.ndarray, int | None]]:
    """(pixels, label) of every sample, straight from the tar files."""
    samples = []
    for shard in read_manifest(root, split).shards:
        with tarfile.open(root / split / shard.name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".png")):
            label = members.get(name.replace(".png", ".cls"))
            pixels = np.asarray(Image.open(io.BytesIO(members[name])))
            samples.append((pixels, None if label is None else int(label)))
    return samples


def test_mnist_source_is_the_real_5k_digits() -> None:
    images, labels = load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert Counter(labels.tolist()) == {digit: 500 for digit in range(10)}
    assert 0.08 < images.mean() / 255 < 0.2  # mostly black background, as in MNIST


def test_split_is_stratified_disjoint_and_seeded() -> None:
    _, labels = load_mnist_5k()
    parts = stratified_split(labels, seed=0)
    sizes = {name: len(idx) for name, idx in parts.items()}
    assert sizes == {"train": 3500, "val": 500, "test": 1000}
    assert len(set(np.concatenate(list(parts.values())).tolist())) == 5000
    for name, per_class in {"train": 350, "val": 50, "test": 100}.items():
        assert Counter(labels[parts[name]].tolist()) == {d: per_class for d in range(10)}
    again, other = stratified_split(labels, seed=0), stratified_split(labels, seed=1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["val"], other["val"])


def test_written_shards_hold_every_digit_exactly(mnist_root: Path) -> None:
    images, labels = load_mnist_5k()
    original = Counter((img.tobytes(), int(lab)) for img, lab in zip(images, labels, strict=True))
    written = Counter()
    for split in ("train", "val", "test"):
        manifest = read_manifest(mnist_root, split)
        assert manifest.recipe == "mnist" and (manifest.channels, manifest.image_size) == (1, 28)
        samples = read_split(mnist_root, split)
        assert len(samples) == manifest.num_samples
        written.update((pixels.tobytes(), label) for pixels, label in samples)
    assert written == original  # lossless PNG, nothing lost or duplicated


def test_shards_are_mixed_and_uneven(mnist_root: Path) -> None:
    manifest = read_manifest(mnist_root, "train")
    assert [s.num_samples for s in manifest.shards] == [300] * 11 + [200]
    first = read_split(mnist_root, "train")[:300]
    assert len({label for _, label in first}) == 10  # shuffled before writing


def test_ood_split_is_unlabelled_photo_crops(mnist_root: Path) -> None:
    manifest = read_manifest(mnist_root, "ood")
    assert not manifest.labeled and manifest.num_samples == 1000
    samples = read_split(mnist_root, "ood")
    assert all(label is None and pixels.shape == (28, 28) for pixels, label in samples)
    assert np.std([pixels.mean() for pixels, _ in samples]) > 5  # varied real content


def test_cli_writes_reproducible_shards(tmp_path: Path, capsys) -> None:
    assert main(["shards", "mnist", "--out", str(tmp_path / "a"), "--no-ood"]) == 0
    assert "data.root:" in capsys.readouterr().out
    assert main(["shards", "mnist", "--out", str(tmp_path / "b"), "--no-ood"]) == 0
    digests = [
        [s.sha256 for s in read_manifest(tmp_path / run, "val").shards] for run in ("a", "b")
    ]
    assert digests[0] == digests[1]
    assert not (tmp_path / "a" / "ood").exists()


def test_cli_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    args = ["shards", "mnist", "--out", str(tmp_path), "--no-ood"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
