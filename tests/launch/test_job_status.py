"""launch/job_status.py and the end of launch/submit.sh: the exit status of a submitted job
is 0 only when it SUCCEEDED (`ray job submit` alone exits 0 for a stopped job). Checked
without a cluster: job_status.main with a stand-in client, and submit.sh run with a stand-in
`ray` CLI and `ray.job_submission` module (FT_DIST_RAY)."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("job_status", REPO / "launch" / "job_status.py")
job_status = importlib.util.module_from_spec(spec)
spec.loader.exec_module(job_status)


@pytest.mark.parametrize(
    ("status", "driver_exit", "code"),
    [
        ("SUCCEEDED", 0, 0),
        ("SUCCEEDED", None, 0),
        ("STOPPED", None, 143),
        ("STOPPED", 143, 143),
        ("FAILED", 2, 2),  # ft-dist train: a config error
        ("FAILED", 143, 143),
        ("FAILED", None, 1),
        ("FAILED", -9, 1),  # killed: no exit code of its own
        ("RUNNING", None, 1),
        ("PENDING", None, 1),
    ],
)
def test_only_succeeded_exits_0(status: str, driver_exit: int | None, code: int) -> None:
    assert job_status.exit_code(status, driver_exit) == code


class FakeClient:
    """Stands in for ray.job_submission.JobSubmissionClient."""

    jobs: dict[str, types.SimpleNamespace] = {}

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def get_job_info(self, job_id: str) -> types.SimpleNamespace:
        if job_id not in self.jobs:
            raise RuntimeError(f"Job {job_id} does not exist")
        return self.jobs[job_id]


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    module = types.ModuleType("ray.job_submission")
    module.JobSubmissionClient = FakeClient
    monkeypatch.setitem(sys.modules, "ray.job_submission", module)
    FakeClient.jobs = {}
    return FakeClient


def job(status: str, message: str | None = None, driver_exit_code: int | None = None):
    return types.SimpleNamespace(status=status, message=message, driver_exit_code=driver_exit_code)


def test_a_stopped_job_is_143_with_one_line(fake_client, capsys) -> None:
    fake_client.jobs["j1"] = job("STOPPED", "Job was intentionally stopped.")
    assert job_status.main(["j1", "0"]) == 143
    assert capsys.readouterr().err == (
        "submit.sh: job j1 STOPPED (Job was intentionally stopped.); exit 143: its newest "
        "checkpoint is kept: submit the same command again to resume\n"
    )


def test_succeeded_is_silent_failed_keeps_the_drivers_code(fake_client, capsys) -> None:
    fake_client.jobs.update(ok=job("SUCCEEDED"), bad=job("FAILED", "exit 2\nmore", 2))
    assert job_status.main(["ok", "0"]) == 0
    assert capsys.readouterr().err == ""
    assert job_status.main(["bad", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("submit.sh: job bad FAILED (exit 2); exit 2: ") and err.count("\n") == 1


def test_a_job_still_running_or_never_submitted(fake_client, capsys) -> None:
    fake_client.jobs["r"] = job("RUNNING")
    assert job_status.main(["r", "0"]) == 1
    assert "job r RUNNING; exit 1: the job still runs" in capsys.readouterr().err
    assert job_status.main(["missing", "7"]) == 7  # the submission failed: its own code
    assert "no status for job missing" in capsys.readouterr().err


FAKE_RAY_CLI = """\
import json, os, sys
with open(os.environ["FAKE_RAY_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
print("Job 'x' was stopped")  # what ray job submit prints, exit 0, for a stopped job
sys.exit(int(os.environ.get("FAKE_SUBMIT_EXIT", "0")))
"""
FAKE_JOB_SUBMISSION = """\
import json, os, types
class JobSubmissionClient:
    def __init__(self, address=None):
        self.address = address
    def get_job_info(self, job_id):
        return types.SimpleNamespace(
            status=os.environ["FAKE_JOB_STATUS"], message=None, driver_exit_code=None
        )
"""


def stand_in_ray(tmp_path: Path) -> Path:
    """A `ray` CLI whose #! interpreter runs Python with a stand-in ray.job_submission."""
    (tmp_path / "fake" / "ray").mkdir(parents=True)
    (tmp_path / "fake" / "ray" / "__init__.py").write_text("")
    (tmp_path / "fake" / "ray" / "job_submission.py").write_text(FAKE_JOB_SUBMISSION)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path / "fake"} exec {sys.executable} "$@"\n')
    ray = tmp_path / "ray"
    ray.write_text(f"#!{python}\n{FAKE_RAY_CLI}")
    for path in (python, ray):
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return ray


def submit_env(tmp_path: Path, status: str, **extra: str) -> dict[str, str]:
    """submit.sh's environment with the stand-in `ray`: none of the caller's RAY_/FT_DIST_
    settings, the job reported as ``status``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FT_DIST_"))}
    env.update(
        RAY_ADDRESS="http://127.0.0.1:8265",
        RAY_AUTH_MODE="disabled",
        FT_DIST_RAY=str(stand_in_ray(tmp_path)),
        FAKE_RAY_LOG=str(tmp_path / "calls.jsonl"),
        FAKE_JOB_STATUS=status,
        **extra,
    )
    return env


@pytest.mark.parametrize(("status", "code"), [("STOPPED", 143), ("SUCCEEDED", 0), ("FAILED", 1)])
def test_submit_sh_exits_with_the_jobs_status(tmp_path: Path, status: str, code: int) -> None:
    env = submit_env(tmp_path, status)
    result = subprocess.run(
        [str(REPO / "launch" / "submit.sh"), "configs/demo_dst.yaml", "train.run_name=x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == code, result.stdout + result.stderr
    [call] = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert call[:2] == ["job", "submit"] and call[-4:] == [
        "ft-dist",
        "train",
        "configs/demo_dst.yaml",
        "train.run_name=x",
    ]
    submission_id = call[call.index("--submission-id") + 1]
    assert submission_id.startswith("ft-dist-")
    if code:
        assert f"submit.sh: job {submission_id} {status}" in result.stderr
    else:
        assert result.stderr == ""


def test_submit_sh_no_wait_exits_once_submitted(tmp_path: Path) -> None:
    env = submit_env(tmp_path, "PENDING", FT_DIST_SUBMIT_OPTS="--no-wait")
    result = subprocess.run(
        [str(REPO / "launch" / "submit.sh"), "configs/demo_dst.yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("points", [None, "/tmp/points"])
def test_submit_sh_forwards_fault_points_only_when_set(tmp_path: Path, points: str | None) -> None:
    env = submit_env(tmp_path, "SUCCEEDED", **({"FT_DIST_FAILPOINTS": points} if points else {}))
    script = [str(REPO / "launch" / "submit.sh"), "configs/demo_dst.yaml"]
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [call] = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    runtime_env = json.loads(call[call.index("--runtime-env-json") + 1])
    expected = {"FT_DIST_BASE_DIR": str(REPO)} | ({"FT_DIST_FAILPOINTS": points} if points else {})
    assert runtime_env == {"env_vars": expected}


def run_submit_sh(tmp_path: Path, args: list[str], **env_vars: str) -> subprocess.CompletedProcess:
    """submit.sh with a stand-in `ray` whose job SUCCEEDED, and FT_DIST_* from `env_vars` only."""
    env = submit_env(tmp_path, "SUCCEEDED", **env_vars)
    script = [str(REPO / "launch" / "submit.sh"), *args]
    return subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)


def test_submit_sh_submits_a_sweep_with_its_options_as_given(tmp_path: Path) -> None:
    args = ["configs/demo_dst.yaml", "optim.lr=0.05,0.1", "--scheduler", "asha", "--name", "s 1"]
    result = run_submit_sh(tmp_path, args, FT_DIST_COMMAND="sweep")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    [call] = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert call[call.index("--") :] == ["--", "ft-dist", "sweep", *args]


def test_submit_sh_refuses_another_command_in_one_line(tmp_path: Path) -> None:
    result = run_submit_sh(tmp_path, ["configs/demo_dst.yaml"], FT_DIST_COMMAND="evaluate")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: FT_DIST_COMMAND=evaluate: submit.sh runs")
    assert not (tmp_path / "calls.jsonl").exists()  # nothing submitted
