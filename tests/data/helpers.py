"""Real shards for the data tests: tiny images, written with plain tarfile + a manifest.

``make_split`` builds shards with any sizes (uneven, odd totals) independently of the
writer under test, so the readers are tested against the format, not against themselves.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ft_dist.data.manifest import file_sha256, write_manifest


def encode_image(index: int, size: int = 12, fmt: str = "PNG", mode: str = "L") -> bytes:
    """A deterministic image whose pixels encode ``index`` (mean pixel rises with it)."""
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 40, size=(size, size), dtype=np.uint8) + np.uint8(index % 200)
    image = Image.fromarray(pixels, mode="L").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_split(
    root: Path,
    split: str,
    shard_sizes: list[int],
    *,
    num_classes: int = 3,
    size: int = 12,
    fmt: str = "PNG",
    mode: str = "L",
    recipe: str | None = "mnist",
    labels: list[int] | None = None,
    corrupt: frozenset[int] = frozenset(),
) -> list[int]:
    """Write ``root/split`` with shards of the given sizes; returns every sample's label.

    Sample ``i`` (global index) has label ``labels[i]`` (default ``i % num_classes``) and an
    image generated from ``i``; samples in ``corrupt`` get a truncated, undecodable image
    (the manifest still matches the shard bytes, as for data that rotted before writing).
    """
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    total = sum(shard_sizes)
    labels = labels if labels is not None else [i % num_classes for i in range(total)]
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    shards, index = [], 0
    for number, count in enumerate(shard_sizes):
        name = f"shard-{number:06d}.tar"
        with tarfile.open(split_dir / name, "w") as tar:
            for i in range(index, index + count):
                image = encode_image(i, size, fmt, mode)
                add_member(
                    tar, f"{i:09d}.{ext}", image[: len(image) // 3] if i in corrupt else image
                )
                add_member(tar, f"{i:09d}.cls", str(labels[i]).encode())
        chunk = labels[index : index + count]
        shards.append(
            {
                "name": name,
                "num_samples": count,
                "num_bytes": (split_dir / name).stat().st_size,
                "sha256": file_sha256(split_dir / name),
                "label_min": min(chunk),
                "label_max": max(chunk),
            }
        )
        index += count
    write_manifest(
        split_dir,
        {
            "split": split,
            "num_samples": total,
            "num_classes": num_classes,
            "classes": [f"c{i}" for i in range(num_classes)],
            "labeled": True,
            "image_mode": mode,
            "channels": 1 if mode == "L" else 3,
            "image_size": size,
            "recipe": recipe,
            "shards": shards,
        },
    )
    return labels


def flip_byte(path: Path, offset: int = -1) -> None:
    """Change one byte (default: in the end-of-archive padding): same size, new sha256."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
