"""`ft-dist bench gpu`: the driver (processes, time limits, report) and every check on CPU."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from ft_dist.bench import gpu
from ft_dist.bench.gpu_checks import SIZES, check_env, check_train, run_check
from ft_dist.bench.gpu_strategy import check_ddp, check_fsdp2
from ft_dist.cli import main

CPU = torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: it would check it")
def test_no_gpu_says_so_and_exits_zero(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpu-check.json"
    assert main(["bench", "gpu", "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no CUDA device" in captured.err
    assert json.loads(captured.out) == json.loads(out.read_text())
    assert json.loads(out.read_text())["skipped"] == "no CUDA device"


def _process_state(pid: int) -> str:
    """'gone', 'Z' (zombie) or the live state letter of a process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "gone"


def test_a_hanging_check_is_stopped_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen(['sleep', '120'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )
    running = gpu.start_process("hang", [sys.executable, "-c", code], 3.0, tmp_path)
    start = time.monotonic()
    result = gpu.finish(running)
    assert time.monotonic() - start < 30
    assert result["passed"] is False and result["error"] == "timed out after 3 s"
    deadline = time.monotonic() + 10
    while _process_state(int(pid_file.read_text())) not in ("gone", "Z"):
        assert time.monotonic() < deadline, "the check's child survived the timeout"
        time.sleep(0.2)


def test_a_crashing_check_reports_its_exit_code_and_log(tmp_path: Path) -> None:
    code = "print('segfault-like failure'); raise SystemExit(3)"
    result = gpu.finish(gpu.start_process("crash", [sys.executable, "-c", code], 60, tmp_path))
    assert result["passed"] is False
    assert result["error"] == "exited with code 3 without a result"
    assert "segfault-like failure" in result["log_tail"]


def test_checks_beyond_the_budget_are_skipped_not_started(tmp_path: Path) -> None:
    result = gpu.run_checks(gpu.CHECKS, "cpu", "tiny", budget=1.0, workdir=tmp_path)
    assert result["skipped"] == [name for name, _, _ in gpu.CHECKS]
    assert result["passed"] is False and not list(tmp_path.glob("*.log"))
    assert "SKIP" in gpu.format_table(result)


def test_table_and_summary_show_every_result() -> None:
    checks = {
        "env": {"passed": True, "summary": "H200", "goals": {}, "seconds": 1.0},
        "train_eager": {
            "passed": True, "summary": "x0.93", "goals": {"sparse >= 0.95 x dense": False},
            "seconds": 20.0,
        },
        "decode": {"passed": False, "summary": "RuntimeError: boom", "goals": {}, "seconds": 3.0},
        "ray_demo": {"passed": None, "summary": "skipped", "goals": {}},
    }  # fmt: skip
    result = gpu.summarize(checks, "cuda", "full", 300, 42.0)
    assert result["failed"] == ["decode"] and result["skipped"] == ["ray_demo"]
    assert result["passed"] is False and result["goals_met"] is False
    table = gpu.format_table(result)
    for text in ("PASS", "FAIL", "SKIP", "goal MISSED: sparse >= 0.95 x dense", "(2/4 checks"):
        assert text in table


def test_env_check() -> None:
    result = check_env(CPU, SIZES["tiny"], Path("."))
    assert result["passed"] is True and result["gpu"] is None
    assert result["versions"]["torch"] == torch.__version__
    assert result["versions"]["deepspeed"] and result["versions"]["ray"]


def test_train_check_runs_dense_and_sparse_and_keeps_invariants() -> None:
    result = check_train(CPU, SIZES["tiny"], Path("."))
    assert result["passed"] is True and result["invariants_hold"] is True
    assert result["sparse_vs_dense_images_per_s"] > 0
    assert list(result["goals"]) == ["sparse >= 0.95 x dense images/s"]
    assert result["recompiles"] is None  # eager


def test_ddp_strategy_check_on_gloo() -> None:
    result = check_ddp(CPU, SIZES["tiny"], Path("."))
    assert result["passed"] is True, result
    assert result["backend"] == "gloo" and result["mask_updates"] == 2
    assert result["num_violations"] == 0 and result["mask_positions_changed"] > 0


def test_fsdp2_strategy_check_on_gloo() -> None:
    result = check_fsdp2(CPU, SIZES["tiny"], Path("."))
    assert result["passed"] is True, result
    assert result["backend"] == "gloo" and result["mask_updates"] == 2
    assert result["num_violations"] == 0 and result["mask_positions_changed"] > 0
    assert result["parameter_dtypes"] == ["torch.float32"]


def test_a_failing_check_becomes_a_result(tmp_path: Path) -> None:
    result = run_check("env", "cuda:7", "tiny", tmp_path)  # no such device here
    assert result["passed"] is False
    assert result["error"] and result["traceback"]


@pytest.mark.slow
@pytest.mark.heavy
def test_driver_runs_checks_in_processes_on_cpu(tmp_path: Path, capsys) -> None:
    argv = ["bench", "gpu", "--device", "cpu", "--json", "--out", str(tmp_path / "r.json")]
    argv += ["--workdir", str(tmp_path / "w"), "--budget", "900"]
    code = main([*argv, "--only", "env", "train_compiled", "strategy_deepspeed", "decode"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, json.dumps(result["checks"], indent=1)[-3000:]
    assert result["passed"] is True and result["skipped"] == []
    assert result["checks"]["train_compiled"]["recompiles"] == 0
    assert result["checks"]["decode"]["cuda_config_error"]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.heavy
def test_ray_demo_check_on_cpu(tmp_path: Path) -> None:
    result = run_check("ray_demo", "cpu", "tiny", tmp_path)
    assert result["passed"] is True, result.get("error")
    assert len(result["tickets"]) == 2
    assert result["export"]["num_members"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_checks_on_the_gpu(tmp_path: Path) -> None:
    checks = ("env", "infer_slim", "strategy_ddp", "strategy_deepspeed", "strategy_fsdp2", "decode")
    for name in checks:
        result = run_check(name, "cuda", "tiny", tmp_path / name)
        assert result["passed"] is True, (name, result.get("error"), result.get("traceback"))
