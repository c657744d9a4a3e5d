"""The paper's comparison in miniature: dense, single DST, static sparse ensemble, EDST and
DST Ensemble trained with matched budgets from one EDST config, evaluated the same way.

Budgets follow FreeTickets' CIFAR setting, where one model trains t_ex + t_re epochs
(150 + 100 = 250) and EDST t_ex + M·t_re (450):

    dense            1 model,  density 1,         E = t_ex + t_re epochs
    DST              1 model,  density d,         E epochs
    static ensemble  M models, fixed masks (d),   E epochs each
    EDST             1 run -> M tickets,          t_ex + M·t_re epochs
    DST Ensemble     M models, density d,         E epochs each
    deep ensemble    M dense models,              E epochs each (optional: deep_ensemble=True)

Each row has its deep-ensemble equivalent (DEE, Ashukha et al. 2020): how many dense members
a deep ensemble needs for the same calibrated NLL, read off the deep ensemble's size curve
(or, without it, bounded by the one dense model), and the cost side: FLOPs, parameters and
measured training / inference images per second.

Every variant is an ordinary run directory under OUT/<variant>/ (ensembles of several runs
use the DST Ensemble layout), trained on the Ray cluster and evaluated by
`ft_dist.ensemble.run_eval`; a variant that already finished is not trained again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_dist.config import RunConfig, config_from_dict, config_to_dict
from ft_dist.ensemble.metrics import deep_ensemble_equivalent
from ft_dist.ensemble.run_eval import EvalOptions, evaluate_run
from ft_dist.layout import eval_report, export_dir, member_summaries, run_dir, summary_path
from ft_dist.orchestrate.dst_ensemble import fit_dst_ensemble, is_finished
from ft_dist.train.methods import ensemble_method


@dataclass(frozen=True)
class Variant:
    key: str  # directory name under OUT
    label: str  # table row
    cfg: RunConfig


def _channel_label(channels: dict[str, Any]) -> str:
    """'0.5 of channels', with any per-group fractions: '0.5 of channels, features.0 0.75'."""
    groups = channels.get("channel_group_sparsity") or {}
    parts = [f"{channels['channel_sparsity']:g} of channels"]
    return ", ".join(parts + [f"{group} {fraction:g}" for group, fraction in groups.items()])


def plan_variants(
    base: RunConfig,
    out_dir: Path,
    deep_ensemble: bool = False,
    channels: dict[str, Any] | None = None,
) -> list[Variant]:
    """The five runs of the comparison (six with the deep ensemble, one more with
    ``channels``: the sparsity settings of channel-level EDST), from an EDST config."""
    edst = base.ensemble.edst
    if not ensemble_method(base.ensemble.method).phased or edst is None:
        raise ValueError(
            "ft-dist compare needs an EDST config (ensemble.method: edst with an ensemble.edst "
            "section, e.g. configs/demo_edst.yaml): its M, t_ex and t_re set every budget"
        )
    members = base.ensemble.num_members
    epochs = edst.exploration_epochs + edst.refinement_epochs
    dense = {"density": 1.0}
    static = {"update": "none"}
    # (key, row label, sparsity changes, ensemble method, members, epochs per run)
    rows = [
        ("dense", "dense", dense, "single", 1, epochs),
        ("dst", "DST (single)", {}, "single", 1, epochs),
        ("static_ensemble", f"static sparse ensemble (M={members})", static, "dst_ensemble", members, epochs),
        ("edst", f"EDST (M={members})", {}, "edst", members, None),
        *(
            [("edst_channels", f"channel-level EDST (M={members}, {_channel_label(channels)})",
              channels, "edst", members, None)]
            if channels else []
        ),
        ("dst_ensemble", f"DST Ensemble (M={members})", {}, "dst_ensemble", members, epochs),
    ]  # fmt: skip
    if deep_ensemble:
        rows.append(
            (
                "deep_ensemble",
                f"deep ensemble (dense, M={members})",
                dense,
                "dst_ensemble",
                members,
                epochs,
            )
        )
    return [
        Variant(key, label, _variant_config(base, out_dir, key, sparsity, method, m, n_epochs))
        for key, label, sparsity, method, m, n_epochs in rows
    ]


def _variant_config(
    base: RunConfig,
    out_dir: Path,
    key: str,
    sparsity: dict[str, Any],
    method: str,
    members: int,
    epochs: int | None,
) -> RunConfig:
    data = config_to_dict(base)
    data["sparsity"].update(sparsity)
    data["train"].update(run_name=key, output_dir=str(out_dir))
    ensemble = data["ensemble"]
    data["ensemble"] = {
        "method": method,
        "num_members": members,
        "dst_ensemble": ensemble["dst_ensemble"],
        "edst": ensemble["edst"],
    }
    if ensemble_method(method).own_schedule:
        data["train"].pop("epochs", None)  # e.g. EDST derives its epochs from its phase plan
    else:
        data["train"]["epochs"] = epochs
    return config_from_dict(data, source=f"compare variant {key}")


def train_variant(variant: Variant) -> float:
    """Train one variant unless it already finished; returns the wall seconds spent."""
    from ft_dist.train.worker import fit

    cfg = variant.cfg
    start = time.perf_counter()
    if ensemble_method(cfg.ensemble.method).separate_runs:
        _, outcomes = fit_dst_ensemble(cfg)
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            raise RuntimeError(
                f"{variant.label}: members {[o.member for o in failed]} failed "
                f"({failed[0].error}); re-run the same command to resume them"
            )
    elif not is_finished(cfg):
        fit(cfg, group="compare")
    return time.perf_counter() - start


def _summaries(path: Path) -> list[dict[str, Any]]:
    files = [summary_path(path), *member_summaries(path)]
    return [json.loads(f.read_text()) for f in files if f.is_file()]


def table_row(variant: Variant, report: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """One line of the comparison from a variant's evaluation report."""
    ensemble, flops, cost = report["ensemble"], report["flops"], report.get("cost", {})
    ood = ensemble.get("ood", {})
    calibrated = ensemble.get("calibrated", {})
    summaries = _summaries(run_dir(variant.cfg.train))
    images = sum(int(s.get("images_seen", 0)) for s in summaries)
    seconds = sum(float(s.get("train_seconds", 0.0)) for s in summaries)
    curve = report.get("ensemble_sizes") or []
    return {
        "variant": variant.key,
        "method": variant.label,
        "members": report["num_members"],
        "accuracy": ensemble["test"]["accuracy"],
        "nll": ensemble["test"]["nll"],
        "ece": ensemble["test"]["ece"],
        "calibrated_nll": calibrated.get("nll"),
        "calibrated_ece": calibrated.get("ece"),
        "ood_auroc_entropy": ood.get("auroc_entropy"),
        "ood_auroc_max_prob": ood.get("auroc_max_prob"),
        "train_flops": flops["train_flops"],
        "inference_flops": flops["inference_flops"],
        "dense_forward_flops": flops["dense_forward_flops"],
        "parameters": cost.get("ensemble_active_parameters"),
        "dense_parameters": cost.get("dense_parameters"),
        "inference_images_per_s": cost.get("inference_images_per_s"),
        "train_images_per_s": images / seconds if seconds > 0 else None,
        "train_seconds": seconds,
        "wall_seconds": wall_s,
        # NLL of sub-ensembles of 1..M members, raw and calibrated (averaged over subsets)
        "size_curve_nll": [point["nll"] for point in curve],
        "size_curve_calibrated_nll": [point.get("calibrated_nll") for point in curve],
        "report": str(eval_report(run_dir(variant.cfg.train))),
    }


def add_exported_inference_times(variants: list[Variant], rows: list[dict[str, Any]]) -> None:
    """Wall-clock ms per image of each variant's `ft-dist export` program (channel-slim
    members), all timed in one interleaved loop on this machine's CPU."""
    from ft_dist.export import export_run
    from ft_dist.export.timing import time_programs

    exports = {v.key: export_dir(run_dir(v.cfg.train)) for v in variants}
    for variant in variants:
        export_run(run_dir(variant.cfg.train), exports[variant.key], force=True)
    times = time_programs(exports)
    for row in rows:
        row["inference_ms_per_image"] = times[row["variant"]]


def add_relative_costs(rows: list[dict[str, Any]]) -> None:
    """Training FLOPs relative to the dense run; inference FLOPs relative to one dense model."""
    dense = next((row for row in rows if row["variant"] == "dense"), None)
    for row in rows:
        train_ref = dense["train_flops"] if dense else None
        row["train_flops_vs_dense"] = (
            row["train_flops"] / train_ref if train_ref and row["train_flops"] else None
        )
        row["inference_flops_vs_dense"] = row["inference_flops"] / row["dense_forward_flops"]
        params, dense_params = row.get("parameters"), row.get("dense_parameters")
        row["parameters_vs_dense"] = params / dense_params if params and dense_params else None


def add_deep_ensemble_equivalents(rows: list[dict[str, Any]]) -> None:
    """DEE of every row's ensemble against the dense members the comparison has.

    The dense curve is the deep-ensemble variant's size curve (NLL of 1..M dense members,
    averaged over subsets) when it ran, else the single dense model alone (then DEE only
    says "≤1" or ">1"); no dense row, no DEE. Calibrated NLL (Ashukha et al.'s CLL) when
    every row has it, else the raw NLL everywhere.
    """
    deep = next((row for row in rows if row["variant"] == "deep_ensemble"), None)
    dense = next((row for row in rows if row["variant"] == "dense"), None)
    calibrated = all(row.get("calibrated_nll") is not None for row in rows)
    key = "calibrated_nll" if calibrated else "nll"
    curve: list[float] = []
    source = None
    if deep is not None:
        curve = [v for v in deep.get(f"size_curve_{key}", []) if v is not None]
        source = "deep_ensemble"
    if not curve and dense is not None:
        curve, source = [dense[key]], "dense"
    for row in rows:
        row["dee_metric"] = key
        row["dee_source"] = source if curve else None
        row["dee"], row["dee_note"] = (
            deep_ensemble_equivalent(row[key], curve) if curve else (None, None)
        )


def run_comparison(
    base: RunConfig, out_dir: Path, *, ood: str | None, track: bool, deep_ensemble: bool = False,
    channels: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Path]]:  # fmt: skip
    """Train (or resume) and evaluate every variant; write OUT/compare.json and .md."""
    from ft_dist.orchestrate.compare_table import render_table, table_notes
    from ft_dist.preflight import check_cluster, check_inputs

    out_dir.mkdir(parents=True, exist_ok=True)
    variants = plan_variants(base, out_dir, deep_ensemble, channels)
    for variant in variants:  # every variant's data, splits and room, before any trains
        check_inputs(variant.cfg)
        check_cluster(variant.cfg)
    rows = []
    for variant in variants:
        print(f"== compare: {variant.label} -> {run_dir(variant.cfg.train)}", flush=True)
        wall = train_variant(variant)
        written = evaluate_run(
            run_dir(variant.cfg.train), EvalOptions(ood=ood, track=track, batch_size=500)
        )
        rows.append(table_row(variant, json.loads(written["json"].read_text()), wall))
    add_exported_inference_times(variants, rows)
    add_relative_costs(rows)
    add_deep_ensemble_equivalents(rows)
    json_path = out_dir / "compare.json"
    json_path.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    md_path = out_dir / "compare.md"
    md_path.write_text(render_table(rows) + "\n\n" + table_notes(rows) + "\n")
    return rows, {"json": json_path, "markdown": md_path}
