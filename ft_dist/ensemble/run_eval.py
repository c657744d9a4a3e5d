"""`ft-dist evaluate` end to end: run dir -> tickets + data -> metrics -> report -> W&B.

Only the `data` and `tracking` sections of the run's resolved config.yaml are read, so an
evaluation does not depend on the training-side config schema beyond those two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ft_dist.data.config import DataConfig
from ft_dist.ensemble.corruptions import check_corruptions
from ft_dist.ensemble.data import locate_split, split_data
from ft_dist.ensemble.evaluate import evaluate_tickets
from ft_dist.ensemble.report import summary_metrics, write_report
from ft_dist.ensemble.tickets import find_tickets, load_ticket


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate on, besides the run's own test split."""

    ood: str | None = None
    corruptions: Sequence[str] = ()
    severities: Sequence[int] = (1, 3, 5)
    split: str | None = None  # None: the config's data.test_split
    data_root: str | None = None  # None: the config's data.root
    out_dir: str | None = None  # None: RUN_DIR/eval
    batch_size: int = 256
    num_workers: int = 0
    device: str = "cpu"
    track: bool = True


def read_run_config(path: Path) -> dict[str, Any]:
    """The resolved config.yaml of a run, or of an experiment (or its first member)."""
    candidates = [path / "config.yaml", *sorted(path.glob("members/member_*/config.yaml"))]
    for candidate in candidates:
        if candidate.is_file():
            raw = yaml.safe_load(candidate.read_text()) or {}
            if not isinstance(raw, dict) or "data" not in raw:
                raise ValueError(f"{candidate}: a run config with a 'data:' section is expected")
            return raw
    raise FileNotFoundError(
        f"{path}: no config.yaml (written by `ft-dist train` with every run); pass the run dir"
    )


def _data_config(raw: dict[str, Any], data_root: str | None) -> DataConfig:
    values = dict(raw["data"])
    if data_root is not None:
        values["root"] = data_root
    return DataConfig.model_validate(values)


def evaluate_run(path: str | Path, options: EvalOptions) -> dict[str, Path]:
    """Evaluate the ensemble in `path` and write its report; returns the written paths."""
    root = Path(path)
    check_corruptions(options.corruptions, options.severities)
    ticket_paths, layout = find_tickets(root)
    raw = read_run_config(root)
    data_cfg = _data_config(raw, options.data_root)
    split = options.split or data_cfg.test_split
    if split is None:
        raise ValueError("data.test_split is None in the run config: pass --split NAME")
    test = split_data(
        data_cfg, split, batch_size=options.batch_size, num_workers=options.num_workers
    )
    if options.corruptions:  # several passes over the same images: decode them once
        test = test.cached()
    ood_source = None
    if options.ood is not None:
        ood_root, ood_split = locate_split(options.ood, data_cfg.root)
        ood = split_data(
            data_cfg,
            ood_split,
            root=ood_root,
            labeled=False,
            batch_size=options.batch_size,
            num_workers=options.num_workers,
        )
        ood_source = ood.source
    tickets = [load_ticket(p) for p in ticket_paths]
    report = evaluate_tickets(
        tickets,
        layout,
        root,
        test.source,
        test.normalization,
        ood_source=ood_source,
        corruptions=options.corruptions,
        severities=options.severities if options.corruptions else (),
        device=options.device,
    )
    report["data"] = {"root": data_cfg.root, "split": split, "ood": options.ood}
    out_dir = Path(options.out_dir) if options.out_dir else root / "eval"
    written = write_report(report, out_dir)
    if options.track:
        _log_to_tracker(raw, root, report, written)
    return written


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
