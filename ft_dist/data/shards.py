"""Write one split of encoded images as numbered WebDataset tar shards plus its manifest.

Sources (an image-folder tree, the bundled MNIST digits) hand this module already-encoded
samples in their final order; it only packs them. Each sample becomes ``<key>.<ext>``
(the image bytes exactly as given) and ``<key>.cls`` (the class index as ASCII), with
``key`` the zero-padded position of the sample in the split. Shards are written to a
temporary name and renamed when complete, and the manifest is written last, so an
interrupted run never leaves a split that looks finished.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tarfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_dist.data.manifest import MANIFEST_NAME, file_sha256, write_manifest
from ft_dist.data.pixelstats import PixelMoments, model_mode
from ft_dist.utils import partial_path

SHARD_PATTERN = "shard-{index:06d}.tar"
# PIL format name -> file extension stored in the tar (what the reader dispatches on).
FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "PPM": "ppm"}
_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "LA": 2, "RGBA": 4, "CMYK": 4}


@dataclass(frozen=True)
class EncodedImage:
    """One sample ready to pack: image bytes, their extension, label and image facts."""

    ext: str
    data: bytes
    label: int | None
    width: int
    height: int
    mode: str
    moments: PixelMoments | None = None  # its pixels' sums, for the split's mean/std


@dataclass
class SplitStats:
    """What the writer saw, for the manifest's hints and the closing report."""

    sizes: list[tuple[int, int]] = field(default_factory=list)
    modes: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    pixels: PixelMoments = field(default_factory=PixelMoments)


def prepare_split_dir(out: Path, split: str, overwrite: bool) -> Path:
    """Create ``out/split``; refuse to mix with an existing split unless asked to replace it."""
    split_dir = out / split
    if (split_dir / MANIFEST_NAME).exists() and not overwrite:
        raise ValueError(
            f"{split_dir} already holds a written {split!r} split; pass --overwrite to "
            "replace it or choose another --out/--split"
        )
    split_dir.mkdir(parents=True, exist_ok=True)
    # A killed write's partial shard (utils.partial_path) goes too: its name has the pid.
    stale = [*split_dir.glob("shard-*.tar"), *split_dir.glob("shard-*.tar.*.partial")]
    for old in [*stale, split_dir / MANIFEST_NAME]:
        old.unlink(missing_ok=True)
    return split_dir


def write_split(
    split_dir: Path,
    samples: Iterable[EncodedImage],
    *,
    classes: list[str],
    labeled: bool,
    shard_size: int,
    info: dict[str, Any],
    stats: SplitStats | None = None,
) -> dict[str, Any]:
    """Pack ``samples`` (in order) into shards of ``shard_size`` and write the manifest.

    Returns the manifest content. ``info`` adds descriptive keys (source, seed, recipe).
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    stats = stats or SplitStats()
    sink = _ShardSink(split_dir, shard_size, labeled)
    try:
        for sample in samples:
            stats.sizes.append((sample.width, sample.height))
            stats.modes[sample.mode] += 1
            if sample.moments is not None:
                stats.pixels.add_(sample.moments)
            sink.add(sample)
        shards = sink.close()
    except BaseException:  # a corrupt image, Ctrl-C: leave no partial split behind
        sink.abort()
        raise
    if not shards:
        raise ValueError(f"no images to write into {split_dir}: the source has no usable image")
    content = {
        "split": split_dir.name,
        "num_samples": sum(shard["num_samples"] for shard in shards),
        "num_classes": len(classes),
        "classes": list(classes),
        "labeled": labeled,
        **_image_hints(stats),
        "recipe": info.pop("recipe", None),
        "skipped": len(stats.skipped),
        "skipped_files": stats.skipped[:100],
        **info,
        "shards": shards,
    }
    write_manifest(split_dir, content)
    return content


class _ShardSink:
    """Streams samples into numbered shards (never more than one sample in memory).

    Plain tarfile rather than webdataset's TarWriter: the same format, and it avoids
    importing torch (seconds) in a command that otherwise needs only PIL.
    """

    def __init__(self, split_dir: Path, shard_size: int, labeled: bool) -> None:
        self.split_dir, self.shard_size, self.labeled = split_dir, shard_size, labeled
        self.shards: list[dict[str, Any]] = []
        self.tar: tarfile.TarFile | None = None
        self.labels: list[int] = []
        self.count = self.total = 0

    def add(self, sample: EncodedImage) -> None:
        if self.tar is None:
            tmp = partial_path(self.split_dir / self._name())
            # Closed in _finish_shard: a shard spans many add() calls.
            self.tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        key = f"{self.total:09d}"
        _add_member(self.tar, f"{key}.{sample.ext}", sample.data)
        if self.labeled:
            _add_member(self.tar, f"{key}.cls", str(sample.label).encode("ascii"))
            self.labels.append(int(sample.label or 0))
        self.count, self.total = self.count + 1, self.total + 1
        if self.count == self.shard_size:
            self._finish_shard()

    def close(self) -> list[dict[str, Any]]:
        if self.tar is not None:
            self._finish_shard()
        return self.shards

    def abort(self) -> None:
        """Delete the shard being written and the finished ones: without a manifest they
        are no split at all, and the next run would delete them anyway."""
        if self.tar is not None:
            with contextlib.suppress(OSError):  # the error may have come from this tar
                self.tar.close()
            partial_path(self.split_dir / self._name()).unlink(missing_ok=True)
            self.tar = None
        for shard in self.shards:
            (self.split_dir / shard["name"]).unlink(missing_ok=True)
        self.shards = []

    def _name(self) -> str:
        return SHARD_PATTERN.format(index=len(self.shards))

    def _finish_shard(self) -> None:
        assert self.tar is not None  # internal invariant, not user input
        self.tar.close()
        name = self._name()
        path = self.split_dir / name
        os.replace(partial_path(path), path)
        self.shards.append(
            {
                "name": name,
                "num_samples": self.count,
                "num_bytes": path.stat().st_size,
                "sha256": file_sha256(path),
                "label_min": min(self.labels) if self.labeled else None,
                "label_max": max(self.labels) if self.labeled else None,
            }
        )
        self.tar, self.labels, self.count = None, [], 0


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # mtime 0: reproducible shards
    tar.addfile(info, io.BytesIO(data))


def _image_hints(stats: SplitStats) -> dict[str, Any]:
    """Mode, channels and a square side for the model, from the images actually written.

    Fixed-size datasets (MNIST, CIFAR) report their side; for mixed sizes (ImageNet) the
    median short side is the hint, and the min/median/max sizes are kept for reference.
    """
    mode = stats.modes.most_common(1)[0][0]
    channels = _CHANNELS.get(mode, 3)
    # Mean/std in the mode a derived recipe feeds the model (ft_dist.data.recipes).
    pixels = stats.pixels.stats(model_mode(channels)) if stats.pixels.count else None
    widths = [w for w, _ in stats.sizes]
    heights = [h for _, h in stats.sizes]
    if len(set(stats.sizes)) == 1 and widths[0] == heights[0]:
        side = widths[0]
    else:
        side = int(statistics.median(min(w, h) for w, h in stats.sizes))
    return {
        "image_mode": mode,
        "channels": channels,
        "pixel_stats": pixels,
        "image_size": side,
        "image_size_hint": {
            "min": [min(widths), min(heights)],
            "median": [int(statistics.median(widths)), int(statistics.median(heights))],
            "max": [max(widths), max(heights)],
        },
    }
