"""Ray Train glue without a Ray cluster: paths, hard-linked checkpoint copies, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_dist.cli import main
from ft_dist.cli.train import summary_lines
from ft_dist.train.worker import absolute_paths, connect, is_local_path, link_tree, storage_root
from tests.train.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def test_link_tree_mirrors_files_as_hard_links_and_replaces_an_old_copy(tmp_path: Path):
    src = tmp_path / "checkpoints" / "000000010"
    (src / "sub").mkdir(parents=True)
    (src / "state.pt").write_bytes(b"weights")
    (src / "sub" / "rank_00001.pt").write_bytes(b"rank one")
    dest = tmp_path / "ray_checkpoints" / "000000010"
    dest.mkdir(parents=True)
    (dest / "stale.pt").write_bytes(b"from a torn earlier attempt")
    link_tree(src, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "state.pt",
        "sub",
        "sub/rank_00001.pt",
    ]
    assert (dest / "state.pt").stat().st_ino == (src / "state.pt").stat().st_ino
    assert (dest / "sub" / "rank_00001.pt").read_bytes() == b"rank one"
    assert not list(dest.parent.glob(".tmp-*"))


def test_storage_defaults_to_the_output_dir_and_urls_are_not_local(tmp_path: Path):
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    assert storage_root(cfg) == str(tmp_path / "runs")
    remote = cfg.model_copy(
        update={"ray": cfg.ray.model_copy(update={"storage_path": "s3://bucket/runs"})}
    )
    assert storage_root(remote) == "s3://bucket/runs"
    assert is_local_path("/shared/runs") and is_local_path("file:///shared/runs")
    assert not is_local_path("s3://bucket/runs") and not is_local_path("gs://b/r")


def test_relative_paths_are_resolved_against_the_submit_dir(tmp_path, monkeypatch):
    cfg = tiny_config(Path("data/mnist"), Path("runs"))
    cfg = cfg.model_copy(
        update={
            "ray": cfg.ray.model_copy(update={"storage_path": "s3://bucket/runs"}),
            "tracking": cfg.tracking.model_copy(update={"dir": "wandb_files"}),
        }
    )
    monkeypatch.setenv("FT_DIST_BASE_DIR", str(tmp_path))
    fixed = absolute_paths(cfg)
    assert fixed.data.root == str(tmp_path / "data" / "mnist")
    assert fixed.train.output_dir == str(tmp_path / "runs")
    assert fixed.tracking.dir == str(tmp_path / "wandb_files")
    assert fixed.ray.storage_path == "s3://bucket/runs"
    piped = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"root": "pipe:cat /d/{path}"})}
    )
    assert absolute_paths(piped).data.root == "pipe:cat /d/{path}"
    assert absolute_paths(fixed, base="/elsewhere") == fixed  # idempotent


def test_a_job_submission_address_is_not_a_cluster_to_join(monkeypatch):
    import ray

    if ray.is_initialized():
        pytest.skip("this process already joined a Ray cluster (connect() keeps it)")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(
        ValueError, match=r"job-submission \(dashboard\) address: submit with `launch/submit.sh"
    ):
        connect(None)


def test_train_cli_reports_config_errors_without_starting_ray(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["train", "configs/demo_dst.yaml", "sparsity.density=2"]) == 2
    error = capsys.readouterr().err
    assert "sparsity.density" in error
    assert main(["train", "configs/missing.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_summary_lines_show_throughput_metrics_and_tickets(tmp_path: Path):
    assert summary_lines(tmp_path) == []
    summary = {
        "steps": 24,
        "images_per_s": 812.4,
        "train_flops": 1.5e12,
        "metrics": {"test/accuracy": 0.91234, "val/accuracy": 0.9},
        "tickets": ["tickets/ticket_01.pt"],
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert summary_lines(tmp_path) == [
        "steps 24 | 812 images/s | training FLOPs 1.5e+12",
        "test/accuracy 0.9123 | val/accuracy 0.9",
        "tickets: tickets/ticket_01.pt",
    ]


def test_fit_refuses_a_run_directory_another_process_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fit` (and `fit_dst_ensemble`, for an experiment directory) take the run lock before
    they connect to Ray or start any worker."""
    from ft_dist.orchestrate.dst_ensemble import fit_dst_ensemble
    from ft_dist.runlock import RunLockedError
    from ft_dist.train import worker
    from tests.test_runlock import start_holder, stop

    monkeypatch.setattr(worker, "connect", lambda *a, **k: pytest.fail("connected"))
    single = tiny_config(tmp_path / "data", tmp_path / "runs")
    ensemble = tiny_config(
        tmp_path / "data",
        tmp_path / "runs",
        train={"epochs": 1},
        ensemble={"method": "dst_ensemble", "num_members": 2},
    )
    holder = start_holder(tmp_path / "runs" / "tiny")
    try:
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host"):
            worker.fit(single)
        with pytest.raises(
            RunLockedError, match=f"tiny is in use by another run: pid {holder.pid}"
        ):
            fit_dst_ensemble(ensemble)
    finally:
        stop(holder)
    assert not (tmp_path / "runs" / "tiny" / "members").exists()
