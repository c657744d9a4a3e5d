"""Fault points: inert unless armed, fired once by one process, and a process killed at the
checkpoint-write point leaves no checkpoint that looks complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ft_dist import failpoints

REPO = Path(__file__).resolve().parents[1]


def test_an_unarmed_point_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(failpoints.ENV, raising=False)
    assert failpoints.stall("checkpoint-write") is False
    monkeypatch.setenv(failpoints.ENV, str(tmp_path))
    assert failpoints.stall("checkpoint-write") is False  # nothing armed in the directory
    assert list(tmp_path.iterdir()) == []


def test_an_armed_point_fires_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, str(tmp_path))
    monkeypatch.setattr(failpoints, "STALL_S", 0.0)
    (tmp_path / "checkpoint-write").touch()
    assert failpoints.stall("other-point") is False
    assert failpoints.stall("checkpoint-write", step=7) is True
    fired = json.loads((tmp_path / "checkpoint-write.fired").read_text())
    assert fired == {"pid": os.getpid(), "step": 7}
    assert failpoints.stall("checkpoint-write", step=8) is False  # once
    assert not (tmp_path / "checkpoint-write").exists()


def test_a_point_armed_at_a_step_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(failpoints.ENV, str(tmp_path))
    monkeypatch.setattr(failpoints, "STALL_S", 0.0)
    (tmp_path / "checkpoint-saved@18").touch()
    (tmp_path / "checkpoint-saved-later@0").touch()  # another point's name
    assert [failpoints.stall("checkpoint-saved", step=s) for s in (9, 18, 27)] == [
        False,
        True,
        False,
    ]
    assert json.loads((tmp_path / "checkpoint-saved@18.fired").read_text())["step"] == 18


def test_the_point_holds_until_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, str(tmp_path))
    (tmp_path / "checkpoint-saved").touch()
    fired = tmp_path / "checkpoint-saved.fired"

    def release() -> None:
        while not fired.exists():
            time.sleep(0.01)
        time.sleep(0.3)
        fired.unlink()

    releaser = threading.Thread(target=release)
    releaser.start()
    started = time.monotonic()
    assert failpoints.stall("checkpoint-saved", step=1) is True
    releaser.join()
    assert 0.3 <= time.monotonic() - started < 30


SAVER = """
import sys, torch
from ft_dist.train import checkpoint as ckpt
root, step = sys.argv[1], int(sys.argv[2])
shared = {"model": {"w": torch.full((3,), float(step))}, "loop": {"global_step": step}}
meta = {"model": "m", "world_size": 1}
ckpt.save_checkpoint(root, step, shared, {"rng": ckpt.capture_rng_state()}, meta, rank=0, keep=3)
"""


def save_in_process(root: Path, step: int, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-c", SAVER, str(root), str(step)]
    return subprocess.Popen(command, cwd=REPO, env=env)


def test_killed_during_a_checkpoint_write_the_previous_checkpoint_is_resumed(
    tmp_path: Path,
) -> None:
    from ft_dist.train import checkpoint as ckpt

    points, root = tmp_path / "points", tmp_path / "run" / "checkpoints"
    points.mkdir()
    env = {**os.environ, failpoints.ENV: str(points), "PYTHONPATH": str(REPO)}
    assert save_in_process(root, 5, env).wait(timeout=120) == 0
    (points / "checkpoint-write").touch()
    saver = save_in_process(root, 10, env)
    fired = points / "checkpoint-write.fired"
    deadline = time.monotonic() + 120
    while not (fired.exists() and fired.read_text()):
        assert saver.poll() is None and time.monotonic() < deadline, "the point never fired"
        time.sleep(0.05)
    written = json.loads(fired.read_text())
    assert written["pid"] == saver.pid and written["step"] == 10
    # Killed with state.pt and meta.json of step 10 written, index.json not yet.
    assert {p.name for p in Path(written["directory"]).iterdir()} >= {"state.pt", "meta.json"}
    os.kill(saver.pid, signal.SIGKILL)
    assert saver.wait(timeout=60) == -signal.SIGKILL
    assert [p.name for p in ckpt.checkpoint_dirs(root)] == ["000000005"]
    path, shared, _ = ckpt.load_newest_usable(root / "000000010", rank=0)
    assert path.name == "000000005" and shared["loop"]["global_step"] == 5
    # The next save of that step (the resumed run reaching it again) replaces the debris.
    assert save_in_process(root, 10, env).wait(timeout=120) == 0
    assert [p.name for p in ckpt.checkpoint_dirs(root)] == ["000000005", "000000010"]
    assert not Path(written["directory"]).exists()
