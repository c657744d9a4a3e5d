"""`ft-dist shards imagefolder`: class trees, ImageNet's flat val layout, corrupt images."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ft_dist.cli import main
from ft_dist.data import read_manifest
from ft_dist.data.imagefolder import ImageFolderJob, write_imagefolder

SYNSETS = ["n01440764", "n01443537", "n02119789"]  # sorted; devkit IDs are not in this order


def jpeg_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(20, 40)), int(rng.integers(20, 40))
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def make_tree(root: Path, per_class: int = 8) -> dict[str, str]:
    """SRC/<synset>/<file>.JPEG; returns sha256(image bytes) -> synset."""
    truth = {}
    for c, synset in enumerate(SYNSETS):
        (root / synset).mkdir(parents=True)
        for i in range(per_class):
            data = jpeg_bytes(100 * c + i)
            (root / synset / f"{synset}_{i}.JPEG").write_bytes(data)
            truth[hashlib.sha256(data).hexdigest()] = synset
    return truth


def make_flat_val(root: Path) -> tuple[dict[str, str], list[str]]:
    """SRC/ILSVRC2012_val_0000000N.JPEG; returns (stem -> synset, synset per line)."""
    root.mkdir(parents=True)
    truth, order = {}, []
    for n in range(1, 8):
        synset = SYNSETS[(n * 2) % 3]
        stem = f"ILSVRC2012_val_{n:08d}"
        (root / f"{stem}.JPEG").write_bytes(jpeg_bytes(1000 + n))
        truth[stem], order = synset, [*order, synset]
    return truth, order


def stored_samples(root: Path, split: str) -> list[tuple[bytes, int]]:
    """(image bytes, label) of every stored sample, per shard in order."""
    out = []
    for shard in read_manifest(root, split).shards:
        with tarfile.open(root / split / shard.name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".jpg")):
            out.append((members[name], int(members[name.replace(".jpg", ".cls")])))
    return out


def test_tree_keeps_bytes_sorts_classes_and_shuffles(tmp_path: Path) -> None:
    truth = make_tree(tmp_path / "src")
    content = write_imagefolder(
        ImageFolderJob(src=tmp_path / "src", out=tmp_path / "out", shard_size=10, progress=False)
    )
    manifest = read_manifest(tmp_path / "out", "train")
    assert manifest.classes == tuple(SYNSETS) and manifest.num_samples == 24
    assert [s.num_samples for s in manifest.shards] == [10, 10, 4]
    assert manifest.image_mode == "RGB" and content["image_size_hint"]["max"][0] < 40
    samples = stored_samples(tmp_path / "out", "train")
    stored = {hashlib.sha256(data).hexdigest(): SYNSETS[label] for data, label in samples}
    assert stored == truth  # every JPEG byte-identical, labelled by its folder
    assert len({label for _, label in samples[:10]}) > 1  # the first shard is not one class


def test_val_tree_uses_train_class_indices(tmp_path: Path) -> None:
    make_tree(tmp_path / "train_src")
    (tmp_path / "val_src" / SYNSETS[2]).mkdir(parents=True)  # val holds only the last class
    (tmp_path / "val_src" / SYNSETS[2] / "a.JPEG").write_bytes(jpeg_bytes(7))
    out = tmp_path / "out"
    write_imagefolder(ImageFolderJob(src=tmp_path / "train_src", out=out, progress=False))
    write_imagefolder(
        ImageFolderJob(src=tmp_path / "val_src", out=out, split="val", progress=False)
    )
    assert read_manifest(out, "val").classes == tuple(SYNSETS)
    assert [label for _, label in stored_samples(out, "val")] == [2]


def test_val_tree_with_unknown_class_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path / "train_src")
    (tmp_path / "val_src" / "n99999999").mkdir(parents=True)
    out = tmp_path / "out"
    write_imagefolder(ImageFolderJob(src=tmp_path / "train_src", out=out, progress=False))
    with pytest.raises(ValueError, match="n99999999.*not in the training class list"):
        write_imagefolder(
            ImageFolderJob(src=tmp_path / "val_src", out=out, split="val", progress=False)
        )


def _train_then_flat_val(tmp_path: Path, extra: list[str]) -> tuple[int, dict[str, str]]:
    make_tree(tmp_path / "train_src")
    truth, _ = make_flat_val(tmp_path / "val_src")
    out = tmp_path / "out"
    assert main(["shards", "imagefolder", "--src", str(tmp_path / "train_src"),
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    code = main(["shards", "imagefolder", "--src", str(tmp_path / "val_src"), "--out", str(out),
                 "--split", "val", "--no-progress", *extra])  # fmt: skip
    return code, truth


def _check_flat_val(tmp_path: Path, truth: dict[str, str]) -> None:
    by_bytes = {
        (tmp_path / "val_src" / f"{stem}.JPEG").read_bytes(): SYNSETS.index(synset)
        for stem, synset in truth.items()
    }
    assert dict(stored_samples(tmp_path / "out", "val")) == by_bytes


def test_flat_val_with_loc_csv(tmp_path: Path) -> None:
    truth, _ = make_flat_val(tmp_path / "labels_only")  # the same stems and synsets as val_src
    csv = tmp_path / "LOC_val_solution.csv"
    rows = [f"{stem},{synset} 1 2 30 40 {synset} 5 6 7 8" for stem, synset in truth.items()]
    csv.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    code, truth = _train_then_flat_val(tmp_path, ["--labels", str(csv)])
    assert code == 0
    _check_flat_val(tmp_path, truth)


def test_flat_val_with_devkit_ground_truth(tmp_path: Path) -> None:
    from scipy.io import savemat

    ids = {"n02119789": 1, "n01440764": 2, "n01443537": 3}  # devkit order != sorted order
    synsets = np.zeros((4,), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for row, (wnid, number) in enumerate(ids.items()):
        synsets[row] = (number, wnid, 0)
    synsets[3] = (1001, "n00001740", 3)  # a non-leaf synset, ignored
    savemat(tmp_path / "meta.mat", {"synsets": synsets})
    _, order = make_flat_val(tmp_path / "labels_only")
    truth_txt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth_txt.write_text("\n".join(str(ids[synset]) for synset in order) + "\n")
    extra = ["--labels", str(truth_txt), "--devkit-meta", str(tmp_path / "meta.mat")]
    code, truth = _train_then_flat_val(tmp_path, extra)
    assert code == 0
    _check_flat_val(tmp_path, truth)


def test_devkit_labels_need_the_meta_file(tmp_path: Path, capsys) -> None:
    truth_txt = tmp_path / "gt.txt"
    truth_txt.write_text("1\n2\n")
    code, _ = _train_then_flat_val(tmp_path, ["--labels", str(truth_txt)])
    assert code == 2 and "--devkit-meta" in capsys.readouterr().err


def test_flat_val_needs_the_training_classes(tmp_path: Path) -> None:
    make_flat_val(tmp_path / "val_src")
    (tmp_path / "l.csv").write_text("ImageId,PredictionString\n")
    job = ImageFolderJob(
        src=tmp_path / "val_src", out=tmp_path / "out", split="val", labels=tmp_path / "l.csv"
    )
    with pytest.raises(ValueError, match="needs the training class list"):
        write_imagefolder(job)


def test_corrupt_image_fails_naming_the_file(tmp_path: Path, capsys) -> None:
    make_tree(tmp_path / "src", per_class=3)
    bad = tmp_path / "src" / SYNSETS[1] / "broken.JPEG"
    bad.write_bytes(jpeg_bytes(5)[:300])  # a truncated JPEG
    args = ["shards", "imagefolder", "--src", str(tmp_path / "src"), "--out",
            str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert "broken.JPEG" in capsys.readouterr().err
    assert main([*args, "--skip-corrupt", "--overwrite"]) == 0
    assert "1 corrupt skipped" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "out", "train")
    assert manifest.num_samples == 9 and manifest.extra["skipped"] == 1


def test_parallel_decode_matches_serial(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", per_class=4)
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        job = ImageFolderJob(src=tmp_path / "src", out=out, workers=workers, progress=False)
        write_imagefolder(job)
        digests.append([s.sha256 for s in read_manifest(out, "train").shards])
    assert digests[0] == digests[1]


def test_source_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.jpg").write_bytes(jpeg_bytes(1))
    with pytest.raises(ValueError, match="no class subfolders.*--labels"):
        write_imagefolder(ImageFolderJob(src=tmp_path / "src", out=tmp_path / "o"))


def test_small_grayscale_tree_trains_at_native_size_in_grayscale(tmp_path: Path) -> None:
    # The known issue: such a tree, sharded without --recipe, trained as ImageNet (RGB,
    # RandomResizedCrop(224), flips on 28-px digits).
    from torchvision.transforms import v2

    from ft_dist.data import DataConfig, describe
    from ft_dist.data.pipeline import TrainStream
    from tests.data.formats import write_digit_tree

    write_digit_tree(tmp_path / "digits", per_class=12)
    out = tmp_path / "shards"
    argv = ["shards", "imagefolder", "--src", str(tmp_path / "digits"), "--out", str(out)]
    assert main([*argv, "--shard-size", "40", "--no-progress"]) == 0
    cfg = DataConfig(root=str(out), batch_size_per_worker=8, loader_workers=0)
    info = describe(cfg)
    assert (info.recipe, info.in_channels, info.image_size) == ("derived", 1, 28)
    mean, std = info.resolved_recipe.mean[0], info.resolved_recipe.std[0]
    assert abs(mean - 0.13) < 0.02 and abs(std - 0.31) < 0.02  # measured on these digits
    stream = TrainStream(cfg, rank=0, world_size=1)
    steps = stream.decoder.transform.transforms
    assert [type(step) for step in steps[1:]] == [v2.ToImage, v2.ToDtype, v2.Normalize]
    assert isinstance(steps[0], v2.RandomCrop)  # no flip, no resize, no RandomResizedCrop
    assert steps[0].size == (28, 28) and steps[0].padding == [2, 2, 2, 2]
    images, labels = next(iter(stream.epoch(0)))
    assert images.shape == (8, 1, 28, 28) and labels.max() < 10
