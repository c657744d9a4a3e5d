"""Ray Train's per-report log lines are dropped on a worker, and nothing else is.

In-process, without Ray: the filter is plain `logging`. That Ray still sends these lines
through the root logger's handlers is checked on a real run only (see `_quiet_report_logs`).
"""

from __future__ import annotations

import io
import logging

from ft_dist.train.worker import _quiet_report_logs

# Ray Train V2 names this logger after its source file, outside the `ray.train` tree.
RAY_FILE_LOGGER = "/site-packages/ray/train/v2/_internal/execution/context.py"


def test_report_lines_are_dropped_and_other_records_kept():
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    filters_before = {h: list(h.filters) for h in root.handlers}
    ray_logger = logging.getLogger(RAY_FILE_LOGGER)
    ray_logger.setLevel(logging.INFO)
    try:
        _quiet_report_logs()
        ray_logger.info("Reporting training result %d: %s from rank 0", 1, {"train/loss": 0.5})
        ray_logger.info("Reporting training result 2: TrainingReport(metrics={}) from rank 0")
        ray_logger.warning("Checkpoint upload has been running for 60s")
        logging.getLogger("ft_dist.test").warning("Reporting is ours to keep")
    finally:
        root.removeHandler(handler)
        for other, filters in filters_before.items():
            other.filters[:] = filters
        ray_logger.setLevel(logging.NOTSET)
    assert stream.getvalue().splitlines() == [
        "Checkpoint upload has been running for 60s",
        "Reporting is ours to keep",
    ]
