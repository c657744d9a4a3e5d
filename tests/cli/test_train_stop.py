"""`ft-dist train` as a real process: a second run on its directory is refused at once and
changes nothing; SIGTERM ends it with one line (where it stopped, the checkpoint kept, the
command to resume), exit 143, its lock released and Ray's C++ stack dump kept off the
console (tests/cli/stub_train.py replaces the training, nothing else)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ft_dist import preflight
from ft_dist.cli import main
from ft_dist.layout import driver_log, lock_path
from ft_dist.train import worker
from tests.cli.test_train_errors import write_config

REPO = Path(__file__).resolve().parents[2]


class StubRun:
    """`python -m tests.cli.stub_train [--ray] CONFIG ...` in its own session, tagged with
    a marker variable so that every process it started can be found (Ray's among them)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.marker = f"FT_DIST_TEST_STUB={uuid.uuid4().hex}"
        name, value = self.marker.split("=")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
        env.update({name: value, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        self.err_path = tmp_path / f"stub-{value[:8]}.err"
        with open(self.err_path, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.cli.stub_train", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        line = self.process.stdout.readline().strip()
        assert line == "TRAINING", (line, self.err_path.read_text()[-3000:])

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.err_path.read_text()

    def processes(self) -> list[int]:
        """Pids that carry this run's marker (the stub and whatever it started)."""
        marker, pids = f"{self.marker}\0".encode(), []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    def close(self) -> None:
        """Kill whatever is left (by pid: only this run's processes) and reap the stub."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)
        self.process.stdout.close()


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_a_second_run_on_the_directory_is_refused_at_once_and_changes_nothing(
    tmp_path: Path, dataset: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, dataset, run_name="r1")
    run = tmp_path / "runs" / "r1"
    first = StubRun(tmp_path, str(config))
    try:
        before = files(run)
        assert before["config.yaml"] == b"run_name: r1\n"
        started = []
        monkeypatch.setattr(preflight, "check_inputs", lambda cfg: started.append("checks"))
        monkeypatch.setattr(worker, "connect", lambda *a, **k: started.append("ray"))
        monkeypatch.setattr(worker, "fit", lambda cfg, group=None: started.append("fit"))
        assert main(["train", str(config), "sparsity.density=0.1"]) == 2
        err = capsys.readouterr().err.strip()
        host = socket.gethostname()
        assert err.startswith(
            f"ft-dist train: error: {run} is in use by another run: pid {first.pid} on host "
            f"{host} since "
        )
        assert f"kill {first.pid} on {host}" in err and "\n" not in err, err
        assert started == []  # refused before any check, Ray or worker
        assert files(run) == before and first.process.poll() is None

        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=60) == 143, first.stderr()[-3000:]
        assert lock_path(run).read_text() == ""  # released on exit
        monkeypatch.undo()  # now a second run goes through: the real checks, a stub fit
        monkeypatch.setattr(worker, "connect", lambda *a, **k: None)
        monkeypatch.setattr(preflight, "check_cluster", lambda cfg: None)
        monkeypatch.setattr(worker, "fit", lambda cfg, group=None: run)
        assert main(["train", str(config)]) == 0
    finally:
        first.close()


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_prints_where_it_stopped_and_keeps_ray_stack_dumps_off_the_console(
    tmp_path: Path, dataset: Path
) -> None:
    config = write_config(tmp_path, dataset, run_name="r1")
    run = tmp_path / "runs" / "r1"
    stub = StubRun(tmp_path, "--ray", str(config), "train.run_name=r1")
    try:
        time.sleep(1.0)  # into ray.get (Ray's handlers were installed by connect)
        stub.process.send_signal(signal.SIGTERM)
        assert stub.process.wait(timeout=120) == 143, stub.stderr()[-3000:]
        err = stub.stderr()
        checkpoint = run / "checkpoints" / "000000040"
        assert err.strip().splitlines()[-1] == (
            f"ft-dist train: stopped by SIGTERM at step 40 of 64 (2.50 of 4 epochs done) "
            f"(checkpoint kept at {checkpoint}); resume with: ft-dist train {config} "
            "train.run_name=r1"
        )
        assert "SIGTERM received" not in err and "PC: @" not in err, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        log = driver_log(run).read_text()
        assert f"SIGTERM to ft-dist train (pid {stub.pid} on {socket.gethostname()})" in log
        assert "fake_fit" in log  # the driver's stack at the signal
        assert lock_path(run).read_text() == ""
        deadline = time.monotonic() + 60
        while stub.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stub.processes() == [], "processes of the stopped run left behind"
    finally:
        stub.close()
