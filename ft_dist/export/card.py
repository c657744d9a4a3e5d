"""The model card of an export: README.md in the Hugging Face format (huggingface_hub's
ModelCard: YAML metadata with the test results as a model-index, then Markdown).

It says what the ensemble is (method, members, density, architecture, FLOPs), what it was
trained on, how well it does (the run's `ft-dist evaluate` report.json, when there is one:
accuracy, NLL, ECE, Brier, OoD AUROC), the run's config, and how to load it: with
load_ensemble.py and the model's own library, or the dependency-free ensemble.pt2.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ft_dist.ensemble.tickets import Ticket
from ft_dist.export.artifact import LOADER_FILE
from ft_dist.models import model_config_from_meta, model_family
from ft_dist.models.names import split_spec
from ft_dist.utils import Note, table_entry, write_text_atomic

# report.json keys shown in the card (and as the model-index results): test split, then OoD
TEST_METRICS = ("accuracy", "nll", "ece", "brier")
OOD_METRICS = ("auroc_max_prob", "auroc_entropy")
METRIC_NAMES = {
    "accuracy": "accuracy",
    "nll": "NLL",
    "ece": "ECE",
    "brier": "Brier",
    "auroc_max_prob": "OoD AUROC (max-prob)",
    "auroc_entropy": "OoD AUROC (entropy)",
}


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return "".join(f", {key}={value!r}" for key, value in kwargs.items())


def _timm_takes_img_size(name: str, kwargs: dict[str, Any]) -> bool:
    """Whether timm's model takes ``img_size`` (ViTs do, CNNs do not), as ft_dist builds it."""
    import timm

    with torch.device("meta"):
        try:
            timm.create_model(name, pretrained=False, img_size=32, **kwargs)
        except TypeError as error:
            if "img_size" in str(error):
                return False
            raise
    return True


def _shipped(meta: dict[str, Any]) -> str:
    kwargs = _kwargs_text(dict(meta.get("model_kwargs") or {}))
    return (
        "from ft_dist.models import build_model  # ft_dist builds its shipped models\n\n"
        f"build = lambda: build_model({meta['model']!r}, num_classes={meta['num_classes']}, "
        f"in_channels={meta['in_channels']}, image_size={meta['image_size']}"
        + (f", kwargs={dict(meta.get('model_kwargs') or {})!r}" if kwargs else "")
        + ")"
    )


def _timm(meta: dict[str, Any]) -> str:
    name = str(meta["model"]).partition(":")[2]
    kwargs = dict(meta.get("model_kwargs") or {})
    size = "" if "img_size" in kwargs or not _timm_takes_img_size(name, kwargs) else (
        f", img_size={meta['image_size']}"
    )  # fmt: skip
    return (
        "import timm\n\n"
        f"build = lambda: timm.create_model({name!r}, pretrained=False, "
        f"num_classes={meta['num_classes']}, in_chans={meta['in_channels']}{size}"
        f"{_kwargs_text(kwargs)})"
    )


def _torchvision(meta: dict[str, Any]) -> str:
    if int(meta["in_channels"]) != 3:  # ft_dist swapped the first convolution
        return _shipped(meta) + "  # the torchvision model, its first conv for the channels"
    name = str(meta["model"]).partition(":")[2]
    from torchvision import models

    kwargs = dict(meta.get("model_kwargs") or {})
    accepts = "image_size" in kwargs or _torchvision_takes_image_size(models, name)
    size = f", image_size={meta['image_size']}" if accepts and "image_size" not in kwargs else ""
    return (
        "from torchvision.models import get_model\n\n"
        f"build = lambda: get_model({name!r}, weights=None, num_classes={meta['num_classes']}"
        f"{size}{_kwargs_text(kwargs)})"
    )


def _torchvision_takes_image_size(models: Any, name: str) -> bool:
    with torch.device("meta"):
        try:
            models.get_model(name, weights=None, image_size=224)
        except TypeError as error:
            if "image_size" in str(error):
                return False
            raise
    return True


def _builder(meta: dict[str, Any]) -> str:
    target, attr = split_spec(str(meta["model"])) or ("", "")
    module = Path(target).stem if target.endswith(".py") else target
    where = f"  # {Path(target).name}, the file that trained it" if target.endswith(".py") else ""
    return (
        f"from {module} import {attr}{where}\n\n"
        f"build = lambda: {attr}(num_classes={meta['num_classes']}, "
        f"in_channels={meta['in_channels']}, image_size={meta['image_size']}"
        f"{_kwargs_text(dict(meta.get('model_kwargs') or {}))})"
    )


# How the model's own library builds the untrained full-width network, per model family
# (ft_dist.models.MODEL_FAMILIES).
BUILD_SNIPPETS: dict[str, Callable[[dict[str, Any]], str]] = {
    "shipped": _shipped,
    "timm": _timm,
    "torchvision": _torchvision,
    "builder": _builder,
}


def build_snippet(meta: dict[str, Any]) -> str:
    family = model_family(str(meta["model"])).name
    return table_entry(BUILD_SNIPPETS, family, "model family")(meta)


def read_eval_report(path: Path | None, num_members: int) -> dict[str, Any] | None:
    """The run's `ft-dist evaluate` report, when there is one for these members."""
    if path is None or not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("num_members") != num_members:
        warnings.warn(
            f"{path} evaluates {report.get('num_members')} members, the export has "
            f"{num_members}: the model card leaves its metrics out; run `ft-dist evaluate` again",
            Note,
            stacklevel=2,
        )
        return None
    return report


def flops(tickets: list[Ticket]) -> dict[str, float]:
    """Dense and sparse inference FLOPs of the ensemble (SPEC §8, sparse/flops.py)."""
    from ft_dist.sparse.flops import model_forward_flops

    dense, sparse = 0.0, 0.0
    for ticket in tickets:
        model = model_config_from_meta(ticket.meta, str(ticket.path))
        dense, member = model_forward_flops(model, ticket.full_densities())
        sparse += member
    return {"dense_forward_flops": float(dense), "inference_flops": sparse}


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _eval_results(report: dict[str, Any], model_name: str, dataset: str) -> list[EvalResult]:
    split = (report.get("data") or {}).get("split")
    rows = [(key, report["ensemble"]["test"].get(key)) for key in TEST_METRICS]
    rows += [(key, (report["ensemble"].get("ood") or {}).get(key)) for key in OOD_METRICS]
    return [
        EvalResult(
            task_type="image-classification",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=key,
            metric_name=METRIC_NAMES[key],
            metric_value=float(value),
        )
        for key, value in rows
        if isinstance(value, int | float) and math.isfinite(value)
    ]


def _metrics_table(report: dict[str, Any]) -> list[str]:
    keys = [*TEST_METRICS, *(k for k in OOD_METRICS if k in (report["ensemble"].get("ood") or {}))]
    rows = [(m["name"], m) for m in report["members"]] + [("**ensemble**", report["ensemble"])]
    lines = [
        "| model | " + " | ".join(METRIC_NAMES[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, row in rows:
        values = {**row.get("test", {}), **(row.get("ood") or {})}
        lines.append(f"| {name} | " + " | ".join(_number(values.get(k)) for k in keys) + " |")
    data = report.get("data") or {}
    lines += [
        "",
        f"Test split `{data.get('split')}` ({report.get('num_test_samples')} images), "
        f"ECE over {report.get('ece_bins')} bins; OoD: {', '.join(data.get('ood') or []) or 'none'}"
        f" ({report.get('num_ood_samples') or 0} images). From `ft-dist evaluate` (report.json).",
    ]
    return lines


def card_text(
    tickets: list[Ticket],
    manifest: dict[str, Any],
    config: dict[str, Any],
    report: dict[str, Any] | None,
    method: tuple[str, str],
) -> str:
    """The card (YAML metadata + Markdown) of the export described by ``manifest``."""
    meta = tickets[0].meta
    label, summary = method
    facts = manifest["preprocessing"]
    run_name = str(meta.get("run_name") or Path(manifest["run_dir"]).name)
    dataset = str((config.get("data") or {}).get("name") or facts["recipe"])
    densities = [t.meta.get("density") for t in tickets]
    cost = flops(tickets)
    data = ModelCardData(
        library_name="pytorch",
        model_name=run_name,
        tags=["ft_dist", "sparse", "ensemble", "dynamic-sparse-training", label],
        metrics=[*TEST_METRICS, *OOD_METRICS],
        pipeline_tag="image-classification",
        eval_results=_eval_results(report, run_name, dataset) if report else None,
    )
    files = [(e["file"], e["nbytes"]) for e in manifest.get("safetensors") or []]
    files += [(e["file"], e["nbytes"]) for e in manifest["members"]]
    if manifest.get("program"):
        files.append((manifest["program"]["file"], manifest["program"]["nbytes"]))
    relative = cost["inference_flops"] / cost["dense_forward_flops"]
    lines = [
        f"# {run_name}: {label} ensemble of {len(tickets)} sparse `{meta['model']}`",
        "",
        f"Trained with ft_dist ({label}: {summary}). The ensemble "
        "predicts the mean of its members' softmax probabilities.",
        "",
        "| | |",
        "|---|---|",
        f"| method | {label} ({manifest['layout']} layout) |",
        f"| members | {len(tickets)} |",
        f"| density (active weights per member) | {', '.join(_number(d) for d in densities)} |",
        f"| architecture | `{meta['model']}` {_kwargs_text(dict(meta.get('model_kwargs') or {}))} |",
        f"| classes | {manifest['num_classes']} |",
        f"| input | {facts['in_channels']} x {facts['image_size']} x {facts['image_size']} |",
        f"| inference FLOPs (all members) | {cost['inference_flops']:.4g} "
        f"({relative:.3f} x one dense model) |",
        "",
        "## Data",
        "",
        f"{facts['summary']}. Classes: {', '.join(map(str, manifest['classes']))}.",
        "",
        f"Preprocessing at test time: `{' '.join(facts['eval_transform'].split())}`, then normalised with mean "
        f"{facts['mean']} and std {facts['std']} (load_ensemble.py and ensemble.pt2 do this).",
        "",
        "## Test metrics",
        "",
        *(
            _metrics_table(report)
            if report
            else ["Not evaluated: run `ft-dist evaluate RUN_DIR` before exporting to list them."]
        ),
        "",
        "## How to load",
        "",
        f"With `torch`, `safetensors` and the model's own library ({LOADER_FILE} is in this "
        "repository; it rebuilds every member and averages their probabilities):",
        "",
        "```python",
        f"from {Path(LOADER_FILE).stem} import load_ensemble",
        build_snippet(meta),
        "",
        'ensemble = load_ensemble(".", build)  # the directory holding member_XX.safetensors',
        "probs = ensemble(images)  # float images [N, C, H, W] in [0, 1], after the eval transform",
        "```",
        "",
        "With plain PyTorch and nothing else (the program of the whole ensemble, "
        "preprocessing included):",
        "",
        "```python",
        "import torch",
        "",
        'probs = torch.export.load("ensemble.pt2").module()(images)',
        "```",
        "",
        "## Files",
        "",
        "| file | bytes |",
        "|---|---|",
        *[f"| {name} | {int(size):,} |" for name, size in files],
        "",
        "`member_XX.safetensors`: one ticket each at the architecture's full width, masked "
        "layers as a bit-packed mask plus the active weights (see load_ensemble.py). "
        "`member_XX.bin` + `artifact.json`: ft_dist's own channel-slim encoding "
        "(`ft_dist.export.read_artifact`). `SHA256SUMS`: `sha256sum -c SHA256SUMS`.",
        "",
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def method_of(config: dict[str, Any]) -> tuple[str, str]:
    """(label, summary) of the run's ensemble method, from its config.yaml."""
    from ft_dist.train.methods import RENAMED_METHODS, ensemble_method

    name = (config.get("ensemble") or {}).get("method") or "single"
    entry = ensemble_method(RENAMED_METHODS.get(name, name))
    return entry.label, entry.summary


def write_card(path: Path, text: str) -> None:
    """Write the card, parsed with huggingface_hub first (its metadata must load)."""
    ModelCard(text, ignore_metadata_errors=False)
    write_text_atomic(path, text)
