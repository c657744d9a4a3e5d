"""`ft-dist bench channels CONFIG`: the channel-sparsity trade-off curve of an EDST config.

For each ``--channel-sparsity`` s, one EDST run of CONFIG with ``sparsity.channel_sparsity =
s`` (s = 0: the unstructured run) whose removal ends with the exploration phase
(``channel_end_step`` = t_ex epochs of steps, so every ticket has the same channels), plus
one dense model trained for t_ex + t_re epochs (the reference for NLL and speed). Each run is
trained on the Ray cluster (a finished run is reused), evaluated as `ft-dist evaluate` does,
exported channel-slim as `ft-dist export` does, and its exported ensemble is timed against
one dense model of the same architecture (`ft-dist bench infer --export`): images/s of the
ensemble ÷ images/s of one dense model, same batch, interleaved, on this machine's CPU.

Training in seconds: every channel-level run shrinks at removal (sparsity.channel_shrink,
the default) and is trained a second time kept masked (``channel_shrink=false``, its twin:
same seeds, same masks); ``train ÷ masked`` is its train_seconds ÷ the twin's, and ``train ÷
dense`` its train_seconds ÷ the dense model's (one run of t_ex + t_re epochs: the paper's
"one dense model"), all from the runs' summary.json on this machine, in this invocation.
``--end-fraction`` moves the end of removal to that fraction of the exploration phase
(each fraction one more run per channel sparsity): the schedule trade-off.

Prints a table (or --json) with accuracy, NLL, ECE, the inference ratio, ms per image,
the training ratios, parameters per member and the kept channels per group of ticket 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "channels",
        help="channel sparsity vs accuracy, NLL and ensemble/dense images/s (EDST, trained)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="an EDST run config, e.g. configs/demo_edst.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    parser.add_argument(
        "--channel-sparsity", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.8, 0.9]
    )
    parser.add_argument("--out", metavar="DIR", help="default: <train.output_dir>/channels")
    parser.add_argument("--batch-size", type=int, default=256, help="timing batch")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per variant")
    parser.add_argument("--train-batch-size", type=int, default=128, help="step-time batch")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    parser.add_argument(
        "--no-masked", action="store_true", help="skip the masked twins (train ÷ masked)"
    )
    parser.add_argument(
        "--end-fraction",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="F",
        help="removal ends after F of the exploration phase's steps (default 1.0: at its end)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def steps_per_epoch(cfg) -> int:
    from ft_dist.data import describe
    from ft_dist.train.setup import batch_arithmetic

    info = describe(cfg.data)
    workers = cfg.train.num_workers
    _, global_batch = batch_arithmetic(cfg.train, cfg.data.batch_size_per_worker, workers)
    return info.num_train_samples // global_batch


def variant_configs(
    base,
    out: Path,
    fractions: list[float],
    dense: bool,
    end_fractions: tuple[float, ...] = (1.0,),
    masked: bool = False,
) -> list[tuple]:
    """(label, channel sparsity or None for dense, RunConfig, masked twin's label or None)
    of every run of the curve; a run named in the last field of another is that run's
    masked twin (channel_shrink=false), trained only for its seconds."""
    from ft_dist.config import config_from_dict, config_to_dict
    from ft_dist.train.methods import ensemble_method

    edst = base.ensemble.edst
    if not ensemble_method(base.ensemble.method).phased or edst is None:
        raise ValueError("ft-dist bench channels needs an EDST config (ensemble.method: edst)")
    exploration_steps = edst.exploration_epochs * steps_per_epoch(base)
    runs = []
    for fraction in fractions:
        for end in end_fractions if fraction > 0 else (1.0,):
            name = f"edst_channels_{round(100 * fraction):02d}"
            if end != 1.0:
                name += f"_end{round(100 * end):02d}"
            for shrink in (True, False) if masked and fraction > 0 else (True,):
                data = config_to_dict(base)
                if fraction > 0:
                    end_step = max(1, round(end * exploration_steps))
                    data["sparsity"].update(
                        channel_sparsity=fraction, channel_end_step=end_step, channel_shrink=shrink
                    )
                label = name if shrink else f"{name}_masked"
                twin = f"{name}_masked" if masked and fraction > 0 and shrink else None
                data["train"].update(run_name=label, output_dir=str(out))
                cfg = config_from_dict(data, source=f"bench channels {label}")
                runs.append((label, fraction if shrink else "masked", cfg, twin))
    if dense:
        data = config_to_dict(base)
        data["sparsity"].update(density=1.0)
        data["ensemble"] = {"method": "single", "num_members": 1}
        epochs = edst.exploration_epochs + edst.refinement_epochs
        data["train"].update(run_name="dense", output_dir=str(out), epochs=epochs)
        runs.append(("dense", None, config_from_dict(data, source="bench channels dense"), None))
    return runs


def train_seconds(name: str, cfg) -> dict[str, Any]:
    """Train a masked twin (no evaluation or export): its training seconds."""
    from ft_dist.layout import run_dir, summary_path
    from ft_dist.orchestrate.compare import Variant, train_variant

    wall = train_variant(Variant(name, name, cfg))
    summary = json.loads(summary_path(run_dir(cfg.train)).read_text())
    return {"run": name, "train_seconds": summary["train_seconds"], "wall_seconds": wall}


def add_training_ratios(rows: list[dict[str, Any]], twins: dict[str, dict[str, Any]]) -> None:
    """Each row's train_seconds ÷ its masked twin's and ÷ the dense run's (when run)."""
    dense = next((r["train_seconds"] for r in rows if r["channel_sparsity"] is None), None)
    for row in rows:
        twin = twins.get(row.get("masked_twin") or "")
        row["masked_train_seconds"] = twin["train_seconds"] if twin else None
        row["train_vs_masked"] = row["train_seconds"] / twin["train_seconds"] if twin else None
        row["train_vs_dense"] = row["train_seconds"] / dense if dense else None


def measure_run(name: str, fraction: float | None, cfg, args, twin: str | None) -> dict[str, Any]:
    from ft_dist.bench.slim_infer import measure_export, train_step_times
    from ft_dist.ensemble.run_eval import EvalOptions, evaluate_run
    from ft_dist.ensemble.tickets import find_tickets
    from ft_dist.export import export_run
    from ft_dist.layout import export_dir, run_dir, summary_path
    from ft_dist.orchestrate.compare import Variant, train_variant

    wall = train_variant(Variant(name, name, cfg))
    root = run_dir(cfg.train)
    written = evaluate_run(root, EvalOptions(track=False, batch_size=500))
    report = json.loads(written["json"].read_text())
    test = report["ensemble"]["test"]
    export = export_dir(root)
    export_run(root, export, force=True)
    speed = measure_export(export, args.batch_size, args.repeats)
    summary = json.loads(summary_path(root).read_text())
    ticket = find_tickets(root)[0][-1]  # the run's last ticket: its end-of-training network
    step = train_step_times(ticket, args.train_batch_size, args.repeats)
    return {
        "run": name,
        "channel_sparsity": fraction,
        "members": report["num_members"],
        "accuracy": test["accuracy"],
        "nll": test["nll"],
        "ece": test["ece"],
        "ensemble_vs_dense": speed["ensemble_vs_dense"],
        "ensemble_ms_per_image": speed["ensemble_ms_per_image"],
        "dense_ms_per_image": speed["dense_ms_per_image"],
        "member_parameters": speed["member_parameters"],
        "dense_parameters": speed["dense_parameters"],
        "kept_channels": speed["kept_channels"],
        "group_channels": speed["group_channels"],
        "removed_fraction": summary.get("sparse/channels/removed_fraction"),
        "group_sparsity": dict(cfg.sparsity.channel_group_sparsity) if fraction else None,
        "slim_dense_flops_ratio": summary.get("sparse/channels/slim_dense_flops_ratio"),
        "train_step_slim_vs_masked": step["slim_vs_masked_step_time"],
        "train_step_masked_ms": step["masked_step_ms"],
        "train_step_slim_ms": step["slim_step_ms"],
        "removal_end_fraction_of_steps": (
            cfg.sparsity.channel_end_step / summary["steps"] if fraction else None
        ),
        "channel_end_step": cfg.sparsity.channel_end_step if fraction else None,
        "masked_twin": twin,
        "train_seconds": summary.get("train_seconds"),
        "wall_seconds": wall,
        "run_dir": str(root),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from ft_dist.config import load_config
    from ft_dist.layout import run_dir
    from ft_dist.orchestrate.dst_ensemble import is_finished
    from ft_dist.train.worker import absolute_paths, connect

    base = absolute_paths(load_config(args.config, args.overrides))
    out = Path(args.out).resolve() if args.out else Path(base.train.output_dir) / "channels"
    runs = variant_configs(
        base,
        out,
        list(args.channel_sparsity),
        not args.no_dense,
        tuple(args.end_fraction),
        masked=not args.no_masked,
    )
    # --json: stdout holds the JSON object alone (the workers' lines stay off it).
    connect(base.ray.address, log_to_driver=not args.json)
    progress = sys.stderr if args.json else sys.stdout
    rows, twins = [], {}
    for index, (name, fraction, cfg, twin) in enumerate(runs, 1):
        print(f"== bench channels: {name} ({index}/{len(runs)})", file=progress, flush=True)
        if is_finished(cfg):  # train_variant resumes, so a finished run is not timed again
            print(
                f"   {name}: finished in {run_dir(cfg.train)}; its train seconds are reused "
                "(remove the directory, or pass --out, to time it again)",
                file=progress,
                flush=True,
            )
        if fraction == "masked":
            twins[name] = train_seconds(name, cfg)
        else:
            rows.append(measure_run(name, fraction, cfg, args, twin))
    add_training_ratios(rows, twins)
    result = {"torch_threads": torch.get_num_threads(), "rows": rows}
    (out / "channels.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    print(out / "channels.json", file=progress)
    return 0


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"channel-level EDST trade-off, CPU inference with {result['torch_threads']} threads",
        f"{'run':<20}{'ch.sp':>6}{'removed':>8}{'acc':>8}{'NLL':>8}{'ECE':>8}{'params/mem':>11}"
        f"{'ens/dense':>10}{'ms/img':>8}{'step slim/masked':>17}{'end step':>9}"
        f"{'train s':>8}{'÷ masked':>9}{'÷ dense':>8}",
    ]
    for row in result["rows"]:
        fraction = "-" if row["channel_sparsity"] is None else f"{row['channel_sparsity']:.2f}"
        params = max(p or 0 for p in row["member_parameters"]) / row["dense_parameters"]
        removed = row.get("removed_fraction")
        removed = "-" if removed is None else f"{removed:.3f}"
        lines.append(
            f"{row['run']:<20}{fraction:>6}{removed:>8}{row['accuracy']:>8.4f}{row['nll']:>8.4f}"
            f"{row['ece']:>8.4f}{params:>10.3f}x{row['ensemble_vs_dense']:>9.2f}x"
            f"{row['ensemble_ms_per_image']:>8.3f}{row['train_step_slim_vs_masked']:>16.2f}x"
            f"{_text(row.get('channel_end_step'), 'd'):>9}{row['train_seconds']:>8.1f}"
            f"{_ratio(row.get('train_vs_masked')):>9}{_ratio(row.get('train_vs_dense')):>8}"
        )
    for row in result["rows"]:
        if row["channel_sparsity"]:
            kept = ", ".join(
                f"{g} {row['kept_channels'][g]}/{n}" for g, n in row["group_channels"].items()
            )
            lines.append(f"kept channels, {row['run']} ticket 1: {kept}")
            if row.get("group_sparsity"):
                lines.append(f"  sparsity.channel_group_sparsity: {row['group_sparsity']}")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _text(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
