"""`ft-dist evaluate` end to end: run dir -> tickets + data -> metrics -> report -> W&B.

Only the `data` and `tracking` sections of the run's resolved config.yaml are read, so an
evaluation does not depend on the training-side config schema beyond those two.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ft_dist.data.config import DataConfig
from ft_dist.data.integrity import verify_shards
from ft_dist.ensemble.corruptions import check_corruptions
from ft_dist.ensemble.data import (
    GAUSSIAN_OOD,
    EvalData,
    gaussian_noise_data,
    locate_split,
    split_data,
)
from ft_dist.ensemble.evaluate import evaluate_tickets
from ft_dist.ensemble.inputs import BatchSource
from ft_dist.ensemble.metrics import NUM_ECE_BINS, OFFICIAL_ECE_BINS
from ft_dist.ensemble.report import summary_metrics, write_report
from ft_dist.ensemble.robustness import CorruptionBenchmark, CorruptionCell
from ft_dist.ensemble.tickets import find_tickets, load_ticket
from ft_dist.layout import CONFIG_FILE, config_path, eval_dir, member_dirs
from ft_dist.train.methods import RENAMED_METHODS, ensemble_method

ALL_SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate on, besides the run's own test split."""

    ood: str | Sequence[str] | None = None  # split specs, or "gaussian"
    corruptions: Sequence[str] = ()
    severities: Sequence[int] | None = None  # None: 1 3 5 built-in, all five from files
    corruptions_from: str | None = None  # CIFAR-10-C / CIFAR-100-C / ImageNet-C directory
    corruption_limit: int | None = None  # samples per corruption x severity (quick runs)
    split: str | None = None  # None: the config's data.test_split
    # Temperature scaling: the split to fit on. None: data.val_split when it exists on disk;
    # "none": no calibrated figures.
    calibration_split: str | None = None
    # ECE bins. None: 15, or the official code's 14 when the run has sparsity.compat official-*
    ece_bins: int | None = None
    data_root: str | None = None  # None: the config's data.root
    out_dir: str | None = None  # None: RUN_DIR/eval
    batch_size: int = 256
    num_workers: int = 0
    device: str = "cpu"
    track: bool = True
    allow_incomplete: bool = False  # evaluate fewer tickets than the run plans

    @property
    def ood_specs(self) -> tuple[str, ...]:
        if self.ood is None:
            return ()
        return (self.ood,) if isinstance(self.ood, str) else tuple(self.ood)


def read_run_config(path: Path) -> dict[str, Any]:
    """The resolved config.yaml of a run, or of an experiment (or its first member)."""
    candidates = [config_path(path), *map(config_path, member_dirs(path))]
    for candidate in candidates:
        if candidate.is_file():
            raw = yaml.safe_load(candidate.read_text()) or {}
            if not isinstance(raw, dict) or "data" not in raw:
                raise ValueError(f"{candidate}: a run config with a 'data:' section is expected")
            return raw
    raise FileNotFoundError(
        f"{path}: no {CONFIG_FILE} (written by `ft-dist train` with every run); pass the run dir"
    )


def planned_tickets(raw: dict[str, Any], layout: str) -> int:
    """Tickets the run's config plans: ensemble.num_members for a run that yields them all
    (EDST) or a DST Ensemble's experiment directory; 1 for one member run of it."""
    ensemble = raw.get("ensemble") or {}
    method = ensemble.get("method") or "single"
    method = RENAMED_METHODS.get(method, method)
    members = int(ensemble.get("num_members") or 1)
    separate = ensemble_method(method).separate_runs
    return members if layout == "experiment" or not separate else 1


def check_complete(root: Path, raw: dict[str, Any], layout: str, found: int, allow: bool) -> None:
    """Refuse an ensemble with fewer tickets than planned (a run still training, or stopped
    early) unless ``allow``; then say what is evaluated."""
    planned = planned_tickets(raw, layout)
    if found >= planned:
        return
    if not allow:
        raise ValueError(
            f"{root}: found {found} of the {planned} tickets its config plans "
            "(ensemble.num_members): the run is still training or stopped early; let it "
            "finish (re-running `ft-dist train` resumes it), or pass --allow-incomplete to "
            f"evaluate the {found} found"
        )
    print(f"ft-dist evaluate: evaluating {found} of {planned} planned tickets", file=sys.stderr)


def _data_config(raw: dict[str, Any], data_root: str | None) -> DataConfig:
    values = dict(raw["data"])
    if data_root is not None:
        values["root"] = data_root
    return DataConfig.model_validate(values)


def evaluate_run(path: str | Path, options: EvalOptions) -> dict[str, Path]:
    """Evaluate the ensemble in `path` and write its report; returns the written paths."""
    root = Path(path)
    if not options.corruptions_from:
        check_corruptions(options.corruptions, options.severities or (1, 3, 5))
    ticket_paths, layout = find_tickets(root)
    raw = read_run_config(root)
    check_complete(root, raw, layout, len(ticket_paths), options.allow_incomplete)
    data_cfg = _data_config(raw, options.data_root)
    split = options.split or data_cfg.test_split
    if split is None:
        raise ValueError("data.test_split is None in the run config: pass --split NAME")
    test = split_data(
        data_cfg, split, batch_size=options.batch_size, num_workers=options.num_workers
    )
    verify_eval_shards(test, data_cfg.verify)
    benchmark = _benchmark(data_cfg, options)  # checks the files before any model runs
    calibration = _calibration_split(data_cfg, options, split)
    val = (
        split_data(
            data_cfg, calibration, batch_size=options.batch_size, num_workers=options.num_workers
        )
        if calibration
        else None
    )
    num_bins = ece_bins(raw, options.ece_bins)
    if options.corruptions and benchmark is None:  # several passes: decode once
        test = test.cached()
    ood_sources = {
        spec: _ood_data(spec, data_cfg, test, options).source for spec in options.ood_specs
    }
    tickets = [load_ticket(p) for p in ticket_paths]
    report = evaluate_tickets(
        tickets,
        layout,
        root,
        test.source,
        test.normalization,
        val_source=val.source if val is not None else None,
        ood_sources=ood_sources,
        corruptions=() if benchmark else options.corruptions,
        severities=options.severities or (1, 3, 5),
        benchmark=benchmark,
        num_bins=num_bins,
        device=options.device,
    )
    report["data"] = {
        "root": data_cfg.root,
        "split": split,
        "calibration_split": calibration,
        "ood": list(options.ood_specs) or None,
        "corruptions_from": options.corruptions_from,
    }
    out_dir = Path(options.out_dir) if options.out_dir else eval_dir(root)
    written = write_report(report, out_dir)
    if options.track:
        _log_to_tracker(raw, root, report, written)
    return written


def ece_bins(raw: dict[str, Any], requested: int | None) -> int:
    """15 bins, or the official code's 14 for runs in an official compatibility mode."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--ece-bins must be >= 1, got {requested}")
        return requested
    compat = str((raw.get("sparsity") or {}).get("compat") or "none")
    return OFFICIAL_ECE_BINS if compat.startswith("official") else NUM_ECE_BINS


def _calibration_split(cfg: DataConfig, options: EvalOptions, test_split: str) -> str | None:
    """The split temperatures are fitted on, or None (no calibrated figures)."""
    wanted = options.calibration_split
    if wanted == "none":
        return None
    if wanted is None:
        wanted = cfg.val_split
        if wanted is None or not _split_exists(cfg.root, wanted):
            return None  # quietly: a dataset without a validation split
    if wanted == test_split:
        raise ValueError(
            f"--calibration-split {wanted!r} is the test split: temperatures fitted on the "
            "test data would flatter every calibrated figure; use the validation split"
        )
    return wanted


def _split_exists(root: str, split: str) -> bool:
    from ft_dist.data.manifest import read_manifest

    try:
        read_manifest(root, split)
    except (FileNotFoundError, OSError):
        return False
    return True


def _ood_data(spec: str, cfg: DataConfig, test: EvalData, options: EvalOptions) -> EvalData:
    """An --ood set: the paper's Gaussian noise (as many images as the test split), or shards."""
    if spec == GAUSSIAN_OOD:
        return gaussian_noise_data(
            test.num_samples, test.sample_shape, test.normalization, batch_size=options.batch_size
        )
    ood_root, ood_split = locate_split(spec, cfg.root)
    data = split_data(
        cfg,
        ood_split,
        root=ood_root,
        labeled=False,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
    )
    verify_eval_shards(data, cfg.verify)
    return data


def verify_eval_shards(data: EvalData, level: str) -> None:
    """Check an evaluation split's local shards against its manifest as `train` does
    (data.verify: sizes, and sha256 once per changed shard): a tampered test or OoD shard is
    an error naming it, not a silently different score. Built-in corruptions are computed
    from the verified test split; --corruptions-from files have no manifest to check."""
    if data.manifest is not None:
        verify_shards(data.manifest, level)


def _benchmark(cfg: DataConfig, options: EvalOptions) -> CorruptionBenchmark | None:
    """CIFAR-C / ImageNet-C cells from --corruptions-from, read like the run's test data."""
    if not options.corruptions_from:
        return None
    from ft_dist.data import describe
    from ft_dist.data.corrupted import cell_batches, open_corruptions

    info = describe(cfg)
    found = open_corruptions(
        Path(options.corruptions_from),
        info.resolved_recipe,
        info.classes,
        names=options.corruptions,
        severities=options.severities or ALL_SEVERITIES,
        limit=options.corruption_limit,
    )

    def source(dataset: Any) -> BatchSource:
        return lambda: cell_batches(dataset, options.batch_size, options.num_workers)

    cells = tuple(CorruptionCell(name, sev, source(data)) for name, sev, data in found.cells)
    notes = {**found.notes, "limit": options.corruption_limit}
    return CorruptionBenchmark(f"{found.kind} {found.root}", cells, notes)


def _log_to_tracker(
    raw: dict[str, Any], root: Path, report: dict[str, Any], written: dict[str, Path]
) -> None:
    """One W&B run per evaluation (job_type=evaluate) grouped with the training run(s)."""
    from ft_dist.tracking import TrackingConfig, make_tracker

    cfg = TrackingConfig.model_validate(raw.get("tracking") or {})
    run_name = str((raw.get("train") or {}).get("run_name") or root.name)
    tracker = make_tracker(
        cfg,
        run_name=f"{run_name}-eval",
        group=run_name,
        config={"run_dir": str(root), "data": report.get("data")},
        rank=0,
        run_dir=written["json"].parent,
        job_type="evaluate",
    )
    try:
        tracker.summary(summary_metrics(report))
        plots = {name: path for name, path in written.items() if path.suffix == ".png"}
        tracker.log_images(plots)
        tracker.log_files([written["json"], written["markdown"]], base_dir=written["json"].parent)
    finally:
        tracker.finish()
