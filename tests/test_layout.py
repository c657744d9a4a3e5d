"""The run-directory contract (ft_dist/layout.py): the names on disk every layer shares."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ft_dist import layout


def test_run_paths_keep_their_names(tmp_path: Path) -> None:
    run = layout.run_dir(SimpleNamespace(output_dir=str(tmp_path), run_name="r"))
    assert run == tmp_path / "r"
    assert layout.config_path(run) == run / "config.yaml"
    assert layout.summary_path(run) == run / "summary.json"
    assert layout.checkpoint_dir(layout.checkpoints_dir(run), 20) == run / "checkpoints/000000020"
    assert layout.ticket_path(run, 3) == run / "tickets/ticket_03.pt"
    assert layout.eval_report(run) == run / "eval/report.json"
    assert layout.report_md_path(tmp_path) == tmp_path / "report.md"
    assert layout.plots_dir(tmp_path) == tmp_path / "plots"
    assert layout.export_dir(run) == run / "export"
    assert layout.lock_path(run) == run / "run.lock"
    assert layout.driver_log(run) == run / "driver.log"
    assert layout.member_dir(run, 2) == run / "members/member_2"
    assert layout.tune_dir(run) == run / "tune"
    assert layout.members_storage_path("s3://b/x/", "exp") == "s3://b/x/exp/members"


def test_checkpoint_dirs_are_the_complete_ones_in_step_order(tmp_path: Path) -> None:
    root = layout.checkpoints_dir(tmp_path)
    assert layout.checkpoint_dirs(root) == []  # no checkpoints/ yet
    for name in ("000000100", "000000020", ".tmp-000000200", ".old-000000020"):
        (root / name).mkdir(parents=True)
    (root / "000000300").write_text("a file, not a checkpoint")
    assert [p.name for p in layout.checkpoint_dirs(root)] == ["000000020", "000000100"]
    assert layout.checkpoint_step(root / "000000020") == 20
    assert layout.checkpoint_step(root / ".tmp-000000200") is None


def test_member_dirs_in_member_order(tmp_path: Path) -> None:
    assert layout.member_dirs(tmp_path) == [] and layout.member_summaries(tmp_path) == []
    for name in ("member_10", "member_2", "member_x", "other"):
        (layout.members_dir(tmp_path) / name).mkdir(parents=True)
    (layout.members_dir(tmp_path) / "member_3").write_text("a file")
    names = [p.name for p in layout.member_dirs(tmp_path)]
    assert names == ["member_2", "member_10", "member_x"]
    layout.summary_path(layout.member_dir(tmp_path, 10)).write_text("{}")
    assert layout.member_summaries(tmp_path) == [tmp_path / "members/member_10/summary.json"]
