"""`ft-dist export`: the tickets of a run as a sparse artifact plus a plain-PyTorch program.

Every ticket of an EDST / single run (RUN_DIR/tickets) or DST Ensemble experiment
(EXP_DIR/members/*) is first cut channel-slim (export/slim.py: the channels that contribute
nothing, e.g. those channel-level DST removed, physically go, BatchNorm statistics and biases
with them), then encoded sparsely with its BatchNorm statistics; the preprocessing
facts (recipe, image size, channels, mean/std, eval resize) come from the run's
config.yaml and training manifest, as `ft-dist evaluate` reads them. The program is built
from the members *decoded back from the written bytes*, so it is what the artifact holds:
by default (``program_form="auto"``) channel-slim members packed into one network
(export/packed.py), checked against the separate members; full-width members (packing
them measured slower), ``program_form="separate"`` (`--program separate`), and a packing
that fails or does not match (with a warning), ship the members one after another.

Beside them, for sharing: every ticket as ``member_XX.safetensors`` at full width with
``load_ensemble.py``, which rebuilds the ensemble with torch and the model's own library
(export/sharing.py, checked against the tickets), and the model card README.md
(export/card.py). `--push-to-hub` uploads the finished directory (export/hub.py).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ft_dist.ensemble.tickets import (
    Ticket,
    check_compatible,
    find_tickets,
    load_ticket,
)
from ft_dist.export.artifact import (
    CARD_FILE,
    FORMAT,
    LOADER_FILE,
    MANIFEST_FILE,
    PROGRAM_FILE,
    SUMS_FILE,
    VERSION,
    is_artifact_file,
    member_file,
    read_artifact,
    write_manifest_and_sums,
)
from ft_dist.export.card import card_text, method_of, read_eval_report, write_card
from ft_dist.export.format import decode_member, encode_member, sha256_hex
from ft_dist.export.program import ensemble_program, export_program
from ft_dist.export.sharing import write_safetensors
from ft_dist.export.slim import member_model, slim_ticket
from ft_dist.layout import eval_report
from ft_dist.utils import Note, replace_dir, write_bytes_atomic, write_dir_atomic

PROGRAM_INPUT = "float32 images [N, C, H, W] in [0, 1], after eval_transform (not normalised)"
PROGRAM_OUTPUT = "float32 [N, num_classes]: the mean of the members' softmax probabilities"


def preprocessing_facts(run_root: Path, ticket: Ticket, data_root: str | None) -> dict[str, Any]:
    """Recipe, image size, channels, mean/std and classes, resolved as training resolved them
    (config.yaml's data section + the training split's manifest)."""
    from ft_dist.data import describe
    from ft_dist.data.config import DataConfig
    from ft_dist.data.transforms import recipe_transform
    from ft_dist.ensemble.run_eval import read_run_config

    values = dict(read_run_config(run_root)["data"])
    if data_root is not None:
        values["root"] = data_root
    try:
        info = describe(DataConfig.model_validate(values))
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error} (the export reads the training manifest for the recipe, image size and "
            "classes: pass --data ROOT where the run's shards are now)"
        ) from error
    recipe = info.resolved_recipe
    shape = (int(ticket.meta["in_channels"]), int(ticket.meta["image_size"]))
    if shape != (recipe.channels, recipe.size):
        raise ValueError(
            f"{ticket.path}: trained on {shape[0]}-channel {shape[1]}px inputs, but the run's "
            f"data section gives {recipe.channels}-channel {recipe.size}px ({recipe.name}); "
            "pass --data ROOT with the shards the run was trained on"
        )
    return {
        "recipe": recipe.name,
        "image_mode": recipe.mode,
        "image_size": recipe.size,
        "in_channels": recipe.channels,
        "mean": list(recipe.mean),
        "std": list(recipe.std),
        "eval_transform": str(recipe_transform(recipe, train=False, normalize=False)),
        "summary": recipe.summary(),
        "num_classes": info.num_classes,
        "classes": list(info.classes),
    }


def check_out(out: Path, force: bool) -> None:
    """``out`` may receive an export: a new or empty directory, or (``force``) one whose
    export files are to be replaced."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(
            f"--out {out} is not empty; choose a new directory or pass --force to replace "
            "an earlier export there"
        )


def publish(partial: Path, out: Path) -> None:
    """Move the finished export in ``partial`` to ``out``: the whole directory at once, or,
    when ``out`` holds files of the user's, the export's files replaced among them."""
    foreign = [p for p in out.iterdir() if not is_artifact_file(p.name)] if out.is_dir() else []
    if not foreign:
        replace_dir(partial, out)
        return
    for path in out.iterdir():  # only what an export writes
        if is_artifact_file(path.name):
            path.unlink()
    for path in partial.iterdir():
        os.replace(path, out / path.name)
    partial.rmdir()


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def write_members(
    tickets: list[Ticket], out: Path, root: Path, slim: bool = True
) -> tuple[list[dict[str, Any]], list]:
    """Member files, their manifest entries, and the member networks decoded back from the
    bytes (slim when ``slim``: the channels that contribute nothing cut out)."""
    entries, decoded = [], []
    for number, ticket in enumerate(tickets, start=1):
        state, masks, channels = ticket.model_state, ticket.masks, None
        if slim:
            state, masks, channels = slim_ticket(ticket)
        data, index = encode_member(state, masks)
        name = member_file(number)
        write_bytes_atomic(out / name, data)
        state, masks = decode_member(data, index, str(out / name))
        decoded.append(member_model(ticket.meta, state, masks, channels, out / name))
        entries.append(
            {
                "file": name,
                "nbytes": len(data),
                "sha256": sha256_hex(data),
                "source": _relative(ticket.path, root),
                "meta": ticket.meta,
                "channels": channels,
                "tensors": index,
            }
        )
    return entries, decoded


def export_run(
    run_dir: str | Path, out: str | Path, *, data_root: str | None = None, program: bool = True,
    force: bool = False, slim: bool = True, program_form: str = "auto",
    safetensors: bool = True, report: str | Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write the artifact of ``run_dir`` to ``out``, verify it, and return its sizes.
    ``report``: the `ft-dist evaluate` report.json whose metrics the model card shows
    (default RUN_DIR/eval/report.json, left out when there is none)."""
    root, out = Path(run_dir), Path(out)
    paths, layout = find_tickets(root)
    tickets = [load_ticket(path) for path in paths]
    check_compatible(tickets)
    facts = preprocessing_facts(root, tickets[0], data_root)
    report_path = Path(report) if report is not None else eval_report(root)
    if report is not None and not report_path.is_file():
        raise FileNotFoundError(f"--report {report_path}: no such file (ft-dist evaluate's)")
    check_out(out, force)
    written: dict[str, Any] = {}
    options = {"program": program, "slim": slim, "program_form": program_form}
    options |= {"safetensors": safetensors, "report": report_path}

    def write(partial: Path) -> None:
        written.update(_write_artifact(tickets, partial, root, layout, facts, **options))
        read_artifact(partial)  # what was written reads back and verifies, end to end

    # All or nothing: built and verified in a hidden sibling, then moved in place; a failure
    # leaves ``out`` as it was (an earlier export included) and no partial directory.
    write_dir_atomic(out, write, publish)
    return sizes(out, written, tickets[0], tickets)


def _write_artifact(
    tickets: list[Ticket], partial: Path, root: Path, layout: str, facts: dict[str, Any],
    program: bool, slim: bool, program_form: str = "auto", safetensors: bool = True,
    report: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The member files, the safetensors members, the program, the model card and the
    manifest with its checksums, into ``partial``."""
    entries, decoded = write_members(tickets, partial, root, slim)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "byteorder": "little",
        "torch_version": torch.__version__,
        "run_dir": str(root.resolve()),
        "layout": layout,
        "preprocessing": {k: v for k, v in facts.items() if k not in ("num_classes", "classes")},
        "num_classes": facts["num_classes"],
        "classes": facts["classes"],
        "members": entries,
        "program": None,
    }
    if safetensors:
        manifest["safetensors"] = write_safetensors(tickets, partial, facts)
        manifest["loader"] = {"file": LOADER_FILE, "load": "load_ensemble(directory, build)"}
    if program:
        shape = (facts["in_channels"], facts["image_size"], facts["image_size"])
        form, skipped = program_form, None
        if form == "auto":  # packed only pays for slim members (README: packed program)
            slim_members = any((e.get("channels") or {}).get("removed") for e in entries)
            form = "packed" if slim_members else "separate"
            skipped = None if slim_members else FULL_WIDTH_NOT_PACKED
        details = write_program(decoded, facts, shape, partial / PROGRAM_FILE, form)
        if skipped is not None:
            details["packing_skipped"] = skipped
        manifest["program"] = {
            "file": PROGRAM_FILE,
            "nbytes": (partial / PROGRAM_FILE).stat().st_size,
            "input": PROGRAM_INPUT,
            "output": PROGRAM_OUTPUT,
            "load": "torch.export.load(path).module()",
            "memory_format": "channels_last",
            **details,
        }
    from ft_dist.ensemble.run_eval import read_run_config

    config = read_run_config(root)
    text = card_text(
        tickets, manifest, config, read_eval_report(report, len(tickets)), method_of(config)
    )
    write_card(partial / CARD_FILE, text)
    manifest["card"] = {"file": CARD_FILE, "format": "Hugging Face model card"}
    write_manifest_and_sums(partial, manifest)
    return manifest


# Why `--program auto` (the default) runs full-width members one after another: packed into
# grouped convolutions they ran slower (unstructured EDST of `make compare`, M = 3, this
# 2-core VM, 2026-12-07: 0.18x one dense model at batch 256 packed, 0.36x separate).
FULL_WIDTH_NOT_PACKED = (
    "the members are full width (no channel cut out): packed into grouped convolutions they "
    "ran at half the separate members' speed at batch 256 on CPU"
)


def write_program(
    members: list, facts: dict[str, Any], shape: tuple[int, int, int], path: Path, form: str
) -> dict[str, Any]:
    """Export the ensemble program of ``form`` to ``path``; a packed program that
    torch.export cannot trace falls back to the separate members, with a warning."""
    ensemble, details = ensemble_program(members, facts["mean"], facts["std"], shape, form)
    try:
        export_program(ensemble, shape, path)
    except Exception as error:  # noqa: BLE001 - any tracing failure of the packed form
        if details["form"] != "packed":
            raise
        warnings.warn(
            f"ensemble.pt2 runs the {len(members)} members one after another (not packed "
            f"into one network): torch.export failed on the packed network: {error}",
            Note,
            stacklevel=2,
        )
        ensemble, details = ensemble_program(
            members, facts["mean"], facts["std"], shape, "separate"
        )
        details["packing_failed"] = f"torch.export: {error}"
        export_program(ensemble, shape, path)
    return details


def dense_state_bytes(ticket: Ticket) -> int:
    """Bytes of one member's dense state_dict saved with torch.save (the reference size)."""
    buffer = io.BytesIO()
    torch.save(ticket.model_state, buffer)
    return buffer.tell()


def sizes(
    out: Path, manifest: dict[str, Any], ticket: Ticket, tickets: list[Ticket] | None = None
) -> dict[str, Any]:
    members = sum(int(m["nbytes"]) for m in manifest["members"])
    shared = manifest.get("safetensors")
    metadata = (out / MANIFEST_FILE).stat().st_size + (out / SUMS_FILE).stat().st_size
    dense = dense_state_bytes(ticket)
    program = manifest["program"]
    channels = [m["channels"] for m in manifest["members"] if m.get("channels")]
    return {
        "out": str(out),
        "num_members": len(manifest["members"]),
        "member_bytes": members,
        "metadata_bytes": metadata,
        "sparse_bytes": members + metadata,
        "dense_state_dict_bytes": dense,
        "sparse_vs_one_dense": (members + metadata) / dense,
        "program_bytes": None if program is None else int(program["nbytes"]),
        "program_form": None if program is None else program.get("form", "separate"),
        "slim": bool(channels),
        "member_parameters": [c["parameters"] for c in channels],
        "full_parameters": channels[0]["full_parameters"] if channels else None,
        "kept_channels": [c["kept"] for c in channels],
        "group_channels": channels[0]["size"] if channels else None,
        "safetensors_bytes": None if shared is None else sum(int(m["nbytes"]) for m in shared),
        "ticket_bytes": sum(t.path.stat().st_size for t in tickets) if tickets else None,
    }
