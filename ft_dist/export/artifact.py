"""An exported ensemble on disk: member files, artifact.json, the program, SHA256SUMS.

    OUT/artifact.json    format, preprocessing facts, classes, members (meta + tensor index)
    OUT/member_01.bin    one file per ticket, in ft_dist.export.format's sparse encoding
    OUT/ensemble.pt2     torch.export program of the averaged-softmax ensemble (optional)
    OUT/member_01.safetensors  one file per ticket at full width, for the model's own
                         library (export/sharing.py), with OUT/load_ensemble.py (optional)
    OUT/README.md        the model card (Hugging Face format, export/card.py)
    OUT/SHA256SUMS       sha256 of every file above (`sha256sum -c SHA256SUMS` checks it)

Reading verifies every file against SHA256SUMS (and its size against artifact.json)
before parsing anything, then every tensor against its own sha256, so a flipped byte or
a cut-off copy is an error naming the file, never a silently different model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ft_dist.export.format import ArtifactError, decode_member, sha256_hex
from ft_dist.utils import write_bytes_atomic

FORMAT = "ft_dist.sparse-ensemble"
VERSION = 2  # 2: members are channel-slim (their cut channels in artifact.json)
READABLE_VERSIONS = (1, 2)
MANIFEST_FILE = "artifact.json"
SUMS_FILE = "SHA256SUMS"
PROGRAM_FILE = "ensemble.pt2"
MEMBER_FILE_PREFIX = "member_"
MEMBER_FILE_SUFFIX = ".bin"
SHARED_FILE_SUFFIX = ".safetensors"
CARD_FILE = "README.md"
LOADER_FILE = "load_ensemble.py"


def member_file(number: int) -> str:
    return f"{MEMBER_FILE_PREFIX}{number:02d}{MEMBER_FILE_SUFFIX}"


def is_artifact_file(name: str) -> bool:
    """A file name an export writes (and `ft-dist export --force` may replace)."""
    if name in (MANIFEST_FILE, PROGRAM_FILE, SUMS_FILE, CARD_FILE, LOADER_FILE):
        return True
    suffixes = (MEMBER_FILE_SUFFIX, SHARED_FILE_SUFFIX)
    return name.startswith(MEMBER_FILE_PREFIX) and name.endswith(suffixes)


def listed_files(manifest: dict[str, Any]) -> list[tuple[str, int | None]]:
    """(file, bytes when the manifest records them) of every file beside artifact.json that
    SHA256SUMS covers: members, safetensors members, loader, model card, program."""
    files: list[tuple[str, int | None]] = [
        (m["file"], int(m["nbytes"])) for m in manifest["members"]
    ]
    files += [(m["file"], int(m["nbytes"])) for m in manifest.get("safetensors") or []]
    files += [(manifest[key]["file"], None) for key in ("loader", "card") if manifest.get(key)]
    if manifest.get("program"):
        files.append((manifest["program"]["file"], int(manifest["program"]["nbytes"])))
    return files


@dataclass(frozen=True)
class ArtifactMember:
    """One member as read back: dense (masked) state_dict of the slim network, bool masks,
    ticket metadata, and the channels cut per group (``channels["removed"]``)."""

    file: Path
    model_state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    meta: dict[str, Any]
    channels: dict[str, Any] | None = None

    def model(self):
        """The member's network (slim architecture, weights, masks), in eval mode."""
        from ft_dist.export.slim import member_model

        return member_model(self.meta, self.model_state, self.masks, self.channels, self.file)


@dataclass(frozen=True)
class Artifact:
    root: Path
    manifest: dict[str, Any]
    members: list[ArtifactMember]

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.manifest["preprocessing"]


def json_safe(value: Any) -> Any:
    """Metadata for JSON: NaN/inf become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_manifest_and_sums(out: Path, manifest: dict[str, Any]) -> None:
    """artifact.json, then SHA256SUMS over every file the manifest names (written last)."""
    text = json.dumps(json_safe(manifest), indent=1, allow_nan=False) + "\n"
    write_bytes_atomic(out / MANIFEST_FILE, text.encode())
    names = [MANIFEST_FILE, *(name for name, _ in listed_files(manifest))]
    lines = [f"{sha256_hex((out / name).read_bytes())}  {name}\n" for name in names]
    write_bytes_atomic(out / SUMS_FILE, "".join(lines).encode())


def read_sums(root: Path) -> dict[str, str]:
    path = root / SUMS_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{path} is missing: {root} is not a complete `ft-dist export` artifact; re-export"
        )
    sums = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name:
            raise ArtifactError(f"{path}: line {number} is not '<sha256>  <file>'; re-export")
        sums[name] = digest
    if MANIFEST_FILE not in sums:
        raise ArtifactError(f"{path} does not list {MANIFEST_FILE}; re-export")
    return sums


def verify_file(root: Path, name: str, sums: dict[str, str], size: int | None = None) -> bytes:
    """The file's bytes, after checking its size (when known) and its sha256."""
    path = root / name
    if name not in sums:
        raise ArtifactError(f"{path} is not listed in {root / SUMS_FILE}; re-export")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; re-copy the whole artifact directory")
    data = path.read_bytes()
    if size is not None and len(data) != size:
        raise ArtifactError(
            f"{path} is truncated or padded: {len(data)} bytes, expected {size}; re-copy it"
        )
    if sha256_hex(data) != sums[name]:
        raise ArtifactError(
            f"{path} does not match its sha256 in {SUMS_FILE} (changed or damaged); re-copy it"
        )
    return data


def read_manifest(root: Path, sums: dict[str, str]) -> dict[str, Any]:
    path = root / MANIFEST_FILE
    manifest = json.loads(verify_file(root, MANIFEST_FILE, sums))
    if manifest.get("format") != FORMAT or manifest.get("version") not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('version')}, "
            f"expected {FORMAT!r} v{VERSION}; read it with the ft_dist that wrote it"
        )
    return manifest


def read_artifact(path: str | Path) -> Artifact:
    """Verify every file of an artifact and decode its members."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such artifact directory (written by ft-dist export)")
    sums = read_sums(root)
    manifest = read_manifest(root, sums)
    members = []
    for entry in manifest["members"]:
        data = verify_file(root, entry["file"], sums, int(entry["nbytes"]))
        state, masks = decode_member(data, entry["tensors"], str(root / entry["file"]))
        member = ArtifactMember(
            root / entry["file"], state, masks, dict(entry["meta"]), entry.get("channels")
        )
        members.append(member)
    decoded = {entry["file"] for entry in manifest["members"]}
    for name, size in listed_files(manifest):
        if name not in decoded:
            verify_file(root, name, sums, size)
    return Artifact(root, manifest, members)
