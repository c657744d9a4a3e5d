"""Shard manifests: what a split holds, where its shards are, and how to check them.

Every split written by ``ft-dist shards`` has ``<root>/<split>/manifest.json`` listing its
shards with their sample counts, byte sizes and sha256 digests, the class list and image
hints. Readers plan whole epochs from it (steps per epoch, which rank reads which shard)
without touching the shards, which is what keeps every rank's step count identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_dist.utils import write_text_atomic

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ft_dist.shards/1"
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def manifest_relpath(split: str) -> str:
    """<split>/manifest.json relative to a dataset root (local path or URL)."""
    return f"{split}/{MANIFEST_NAME}"


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard: its file name inside the split and what the writer put in it."""

    name: str
    num_samples: int
    num_bytes: int
    sha256: str
    label_min: int | None = None
    label_max: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A split's manifest, plus the dataset root it was read from (to locate shards)."""

    root: str
    split: str
    num_samples: int
    classes: tuple[str, ...]
    labeled: bool
    image_mode: str
    channels: int
    image_size: int
    shards: tuple[ShardInfo, ...]
    recipe: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def shard_url(self, index: int) -> str:
        """The URL/path webdataset's gopen opens for shard ``index``."""
        return resolve(self.root, f"{self.split}/{self.shards[index].name}")

    @property
    def is_local(self) -> bool:
        """Shards on a local file system (checked up front by ``verify_shards``)."""
        return local_path(self.root, "") is not None

    def shard_offsets(self) -> list[int]:
        """Global index of each shard's first sample (shards in manifest order)."""
        offsets, total = [], 0
        for shard in self.shards:
            offsets.append(total)
            total += shard.num_samples
        return offsets


def resolve(root: str, relpath: str) -> str:
    """Join a dataset root and a path inside it into something gopen can open.

    ``pipe:`` roots are templates (``{path}``); ``s3://`` goes through the AWS CLI since
    webdataset has no native S3 reader; other URL schemes and local paths are joined.
    """
    if root.startswith("pipe:"):
        return root.replace("{path}", relpath)
    if root.startswith("s3://"):
        return f"pipe:aws s3 cp {root.rstrip('/')}/{relpath} -"
    if _URL_SCHEME.match(root):
        return f"{root.rstrip('/')}/{relpath}"
    return os.path.join(root, relpath)


def local_path(root: str, relpath: str) -> Path | None:
    """The local file behind ``root/relpath``, or None when the root is remote."""
    if root.startswith("file://"):
        return Path(root[len("file://") :]) / relpath
    if root.startswith("pipe:") or _URL_SCHEME.match(root):
        return None
    return Path(root) / relpath


def read_manifest(root: str | os.PathLike[str], split: str) -> Manifest:
    """Read and validate ``<root>/<split>/manifest.json`` (local path or any gopen URL)."""
    root = str(root)
    relpath = manifest_relpath(split)
    text = _read_text(root, relpath, split)
    where = resolve(root, relpath)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{where} is not valid JSON ({error}); rewrite it with `ft-dist shards`"
        ) from None
    return _parse(raw, root, split, where)


def _read_text(root: str, relpath: str, split: str) -> str:
    path = local_path(root, relpath)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(_missing_manifest_message(root, path, split))
        return path.read_text()
    import webdataset as wds

    url = resolve(root, relpath)
    try:
        with wds.gopen(url, "rb") as stream:
            data = stream.read()
    except Exception as error:  # gopen raises OSError, ValueError or a pipe's exit status
        raise FileNotFoundError(
            f"cannot read manifest {url} ({error}); check data.root and that the split "
            f"{split!r} was uploaded with its manifest.json"
        ) from error
    if not data:
        raise FileNotFoundError(f"manifest {url} is empty or missing; check data.root")
    return data.decode()


def _missing_manifest_message(root: str, path: Path, split: str) -> str:
    base = local_path(root, "")
    found = []
    if base is not None and base.is_dir():
        found = sorted(p.parent.name for p in base.glob(f"*/{MANIFEST_NAME}"))
    hint = f"splits found there: {found}" if found else "no splits found there"
    return (
        f"no manifest for split {split!r} at {path} ({hint}); point data.root at a dir "
        "written by `ft-dist shards imagefolder|mnist --out DIR`"
    )


def _parse(raw: dict[str, Any], root: str, split: str, where: str) -> Manifest:
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{where} is not an ft_dist shard manifest (format {MANIFEST_FORMAT})")
    try:
        shards = tuple(ShardInfo(**shard) for shard in raw["shards"])
        manifest = Manifest(
            root=root,
            split=split,
            num_samples=int(raw["num_samples"]),
            classes=tuple(raw["classes"]),
            labeled=bool(raw["labeled"]),
            image_mode=str(raw["image_mode"]),
            channels=int(raw["channels"]),
            image_size=int(raw["image_size"]),
            shards=shards,
            recipe=raw.get("recipe"),
            extra={k: v for k, v in raw.items() if k not in _CORE_KEYS},
        )
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{where} lacks or mistypes field {error}; rewrite it with `ft-dist shards`"
        ) from None
    check_manifest(manifest, where)
    return manifest


_CORE_KEYS = {"format", "split", "num_samples", "classes", "num_classes", "labeled"} | {
    "image_mode",
    "channels",
    "image_size",
    "shards",
    "recipe",
}


def check_manifest(manifest: Manifest, where: str) -> None:
    """Consistency checks that need no shard I/O: counts, names, label ranges."""
    if manifest.num_shards == 0 or manifest.num_samples == 0:
        raise ValueError(f"{where} lists no samples (empty shard list); rewrite the split")
    total = sum(shard.num_samples for shard in manifest.shards)
    if total != manifest.num_samples:
        raise ValueError(
            f"{where}: shards hold {total} samples but num_samples is {manifest.num_samples}"
        )
    names = [shard.name for shard in manifest.shards]
    if len(set(names)) != len(names):
        raise ValueError(f"{where} lists a shard twice; rewrite the split")
    if manifest.labeled and manifest.num_classes < 1:
        raise ValueError(f"{where} has labels but an empty class list")
    for shard in manifest.shards if manifest.labeled else ():
        low, high = shard.label_min, shard.label_max
        if low is None or high is None or low < 0 or high >= manifest.num_classes:
            raise ValueError(
                f"{where}: shard {shard.name} holds labels {low}..{high}, outside the class "
                f"range 0..{manifest.num_classes - 1}; rewrite the shards or fix the class list"
            )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(split_dir: Path, content: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (readers never see half a manifest)."""
    content = {"format": MANIFEST_FORMAT, **content}
    return write_text_atomic(split_dir / MANIFEST_NAME, json.dumps(content, indent=1) + "\n")
