"""Tracking: console progress, W&B mode rules, and a real offline W&B run read back through
the tracker's own record of what it logged."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ft_dist.tracking import (
    REDACTED,
    ConsoleProgress,
    LoggedRunWriter,
    NullTracker,
    RankZeroTracker,
    TrackingConfig,
    format_duration,
    logged_run_path,
    make_tracker,
    read_logged_run,
    redact_secrets,
    resolve_wandb_mode,
    wandb_run_id,
)
from tests.wandb_logs import wandb_offline_log

CANARY_KEY = "canary0123456789abcdef0123456789abcdef01"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_progress(total_steps: int | None = 100, every_s: float = 10.0):
    stream, clock = io.StringIO(), FakeClock()
    progress = ConsoleProgress(
        "m1", total_steps=total_steps, num_epochs=4, every_s=every_s, stream=stream, clock=clock
    )
    return progress, stream, clock


def test_progress_line_shows_epoch_step_loss_throughput_and_eta():
    progress, stream, clock = make_progress()
    progress.update({"epoch": 0, "train/loss": 2.5, "train/images_per_s": 100.0}, step=10)
    clock.now = 20.0  # 10 more steps in 20 s: 0.5 step/s, 80 steps left -> 160 s
    metrics = {"epoch": 1.5, "train/loss": 1.25, "train/lr": 0.1, "train/images_per_s": 321.4}
    progress.update(metrics, step=20)
    last = stream.getvalue().strip().splitlines()[-1]
    assert last == (
        "[m1] epoch 1.50/4 | step 20/100 (20%) | loss 1.2500 | lr 0.1 | 321 img/s | ETA 2m40s"
    )


def test_progress_is_throttled_but_eval_and_last_step_always_print():
    progress, stream, clock = make_progress(every_s=10.0)
    for step in range(1, 6):  # five updates within one second: only the first prints
        clock.now = step * 0.2
        progress.update({"train/loss": 1.0}, step=step)
    assert len(stream.getvalue().splitlines()) == 1
    progress.update({"val/accuracy": 0.5}, step=6)
    progress.update({"train/loss": 0.5}, step=100)
    lines = stream.getvalue().splitlines()
    assert "val/accuracy 0.5" in lines[-2]
    assert "step 100/100 (100%)" in lines[-1]


def test_a_step_logged_twice_prints_one_progress_line():
    progress, stream, _ = make_progress()
    progress.update({"train/loss": 0.5}, step=100)
    progress.update({"epoch": 4.0}, step=100)  # end-of-epoch metrics at the same step
    assert len(stream.getvalue().splitlines()) == 1


def test_eta_counts_from_the_first_step_this_process_saw():
    """After a resume at step 50 the rate must not be computed as if it started at 0."""
    progress, _, clock = make_progress()
    progress.update({}, step=50)
    clock.now = 10.0
    assert progress.eta_s(60, clock.now) == pytest.approx(40.0)


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 61, 3723)] == ["0s", "1m00s", "1m01s", "1h02m03s"]


def test_wandb_mode_follows_the_api_key_in_the_environment():
    auto = TrackingConfig()
    assert resolve_wandb_mode(auto, {}) == "offline"
    assert resolve_wandb_mode(auto, {"WANDB_API_KEY": "k"}) == "online"
    assert resolve_wandb_mode(auto, {"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_wandb_mode(auto, {"WANDB_MODE": "online"}) == "offline"  # no key: offline
    with pytest.raises(ValueError, match=r"tracking\.wandb=online needs WANDB_API_KEY"):
        resolve_wandb_mode(TrackingConfig(wandb="online"), {})
    assert (
        resolve_wandb_mode(TrackingConfig(wandb="disabled"), {"WANDB_API_KEY": "k"}) == "disabled"
    )


def test_tracking_config_rejects_an_api_key_field_and_bad_values():
    with pytest.raises(ValueError, match="api_key"):
        TrackingConfig(api_key="secret")
    with pytest.raises(ValueError, match="wandb"):
        TrackingConfig(wandb="sometimes")
    with pytest.raises(ValueError, match="progress_every_s"):
        TrackingConfig(progress_every_s=0)


def test_redact_secrets_is_recursive_and_leaves_the_input_alone():
    config = {"a": 1, "wandb": {"API_KEY": "x", "nested": [{"auth_token": "y"}]}, "lr": 0.1}
    assert redact_secrets(config) == {
        "a": 1,
        "wandb": {"API_KEY": REDACTED, "nested": [{"auth_token": REDACTED}]},
        "lr": 0.1,
    }
    assert config["wandb"]["API_KEY"] == "x"


def test_run_id_is_stable_per_member():
    assert wandb_run_id("p", "exp", "member_1") == wandb_run_id("p", "exp", "member_1")
    assert wandb_run_id("p", "exp", "member_1") != wandb_run_id("p", "exp", "member_2")


def test_other_ranks_and_disabled_tracking_write_nothing(tmp_path: Path):
    cfg = TrackingConfig(wandb="offline")
    tracker = make_tracker(cfg, run_name="r", group="g", config={}, rank=1, run_dir=tmp_path)
    assert isinstance(tracker, NullTracker)
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.finish()
    off = make_tracker(
        TrackingConfig(wandb="disabled"),
        run_name="r",
        group="g",
        config={},
        rank=0,
        run_dir=tmp_path,
    )
    assert isinstance(off, RankZeroTracker) and off.wandb_run is None
    off.finish()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real offline W&B run on rank 0, logged while an API key sits in the environment."""
    monkeypatch.setenv("WANDB_API_KEY", CANARY_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    report = run_dir / "report.md"
    run_dir.mkdir()
    report.write_text("# report\n")
    image = run_dir / "plot.png"
    Image.new("RGB", (8, 8), color=(200, 10, 10)).save(image)
    config = {"optim": {"lr": 0.1}, "sparsity": {"density": 0.2}, "extra": {"api_key": "x"}}
    tracker = make_tracker(
        TrackingConfig(wandb="offline", system_metrics=False, tags=("test",)),
        run_name="member_1",
        group="exp",
        config=config,
        rank=0,
        run_dir=run_dir,
        total_steps=20,
    )
    for step in (10, 20):
        tracker.log({"train/loss": 1.0 / step, "sparse/density": 0.2, "epoch": 0}, step=step)
    tracker.log({"val/accuracy": 0.75}, step=20)
    tracker.log_images({"plots/reliability": image}, step=20)
    tracker.log_files([report], base_dir=run_dir)
    tracker.summary({"final/accuracy": 0.8})
    tracker.finish()
    return run_dir


def test_offline_run_records_what_was_logged(offline_run: Path):
    run = read_logged_run(offline_run / "wandb")
    assert (run.name, run.group, run.project) == ("member_1", "exp", "ft-dist")
    assert run.run_id == wandb_run_id("ft-dist", "exp", "member_1")
    assert (run.mode, run.job_type, run.exit_code) == ("offline", "train", 0)
    assert run.config["optim"] == {"lr": 0.1}
    assert run.config["extra"] == {"api_key": REDACTED}
    train = [row for row in run.history if "train/loss" in row]
    assert [(row["trainer/step"], row["train/loss"]) for row in train] == [(10, 0.1), (20, 0.05)]
    assert all(row["sparse/density"] == 0.2 for row in train)
    assert any(row.get("val/accuracy") == 0.75 for row in run.history)
    images = [row for row in run.history if "plots/reliability" in row]
    assert images == [
        {
            "plots/reliability": {"_type": "image", "path": str(offline_run / "plot.png")},
            "trainer/step": 20,
        }
    ]
    assert run.summary["final/accuracy"] == 0.8
    assert run.files == ["report.md"]


def test_offline_run_is_a_real_wandb_run_beside_the_record(offline_run: Path):
    """W&B's own files, found by name only: its log is a private format we never decode."""
    run_id = wandb_run_id("ft-dist", "exp", "member_1")
    log = wandb_offline_log(offline_run, run_id)
    assert log.parent.name.startswith("offline-run-") and log.parent.parent == offline_run / "wandb"
    assert log.stat().st_size > 0
    assert logged_run_path(offline_run, run_id).parent == log.parent.parent
    files = log.parent / "files"
    assert (files / "report.md").resolve() == (offline_run / "report.md").resolve()
    assert len(list((files / "media" / "images").rglob("*.png"))) == 1  # the logged plot
    with pytest.raises(FileNotFoundError, match="no non-empty offline W&B log"):
        wandb_offline_log(offline_run, "someotherrun", wait_s=0)


def test_logged_run_survives_a_write_cut_short_and_a_resume(tmp_path: Path):
    """A killed process can leave half a line; the resumed run appends after it."""
    init = {"run_id": "abc", "name": "m", "project": "p", "group": "g", "job_type": "train"}
    init.update(mode="offline", config={"lr": 0.1})
    path = logged_run_path(tmp_path, "abc")
    first = LoggedRunWriter(path)
    first.write("init", **init)
    first.write("log", row={"train/loss": torch.tensor(0.5), "trainer/step": 1})
    first.close()
    with path.open("a") as file:
        file.write('{"kind": "log", "row": {"train/lo')  # the kill
    second = LoggedRunWriter(path)
    second.write("init", **init)
    second.write("log", row={"train/loss": 0.25, "trainer/step": 2, "w": np.arange(2)})
    second.write("finish", exit_code=0)
    second.close()
    run = read_logged_run(tmp_path)
    assert run.history == [
        {"train/loss": 0.5, "trainer/step": 1},
        {"train/loss": 0.25, "trainer/step": 2, "w": [0, 1]},
    ]
    assert (run.run_id, run.exit_code, run.config) == ("abc", 0, {"lr": 0.1})
    with pytest.raises(FileNotFoundError, match="expected one"):
        read_logged_run(tmp_path / "elsewhere")


def test_api_key_never_reaches_the_files(offline_run: Path):
    leaks = [
        path
        for path in offline_run.rglob("*")
        if path.is_file() and not path.is_symlink() and CANARY_KEY.encode() in path.read_bytes()
    ]
    assert leaks == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_the_record_names_the_file() -> None:
    """ENOSPC keeps its errno (the worker does not retry it) and names the file."""
    writer = LoggedRunWriter(Path("/dev/full"))
    with pytest.raises(OSError, match="writing the run's record /dev/full") as raised:
        writer.write("log", row={"trainer/step": 1})
    assert raised.value.errno == errno.ENOSPC
