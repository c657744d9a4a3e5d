"""`ft-dist bench gpu` (`make gpu-check`): is this GPU machine ready for ft_dist? ~5 minutes.

Checks, each in its own process with its own time limit (ft_dist/bench/gpu_checks.py):
  env                 GPU, memory, bf16, versions of torch/CUDA/cuDNN/NCCL/DeepSpeed/Ray
  train_eager         ResNet-50, bf16 autocast, channels_last, synthetic data: dense vs
                      DynamicSparsity(d = 0.2) images/s, interleaved (goal: sparse >= 0.95 x
                      dense), one mask update in steps, invariants
  infer_slim          ResNet-50 bf16 inference: 3 channel-slim members (channel sparsity
                      0.5) vs one dense model, images/s interleaved (goal: >= 1.0 x dense)
  train_slim          ResNet-50 bf16 training step: channels cut out (channel sparsity 0.5,
                      ERK d = 0.2, the shrinking run's network) vs kept masked, interleaved
                      (goal: slim <= 0.8 x masked step time)
  ray_demo            configs/demo_edst.yaml through Ray with ray.use_gpu=true (shortened),
                      then `ft-dist evaluate` and `ft-dist export` of its tickets; runs in
                      the background beside the checks after it
  strategy_ddp        1-rank nccl DDP strategy, bf16: invariants after each step and update
  strategy_deepspeed  DeepSpeed ZeRO-2 bf16: inactive weights, fp32 masters and momentum 0
  strategy_fsdp2      1-rank nccl FSDP2, bf16 compute with fp32 reduction: inactive weights
                      and momentum 0 on the shards, sharded parameters kept fp32
  decode              JPEG decode + augment: training stream images/s with
                      data.decode_device=cuda (nvJPEG, batched) vs cpu (loader workers)
  train_compiled      train_eager under torch.compile; recompiles over 5 mask updates (0)

A failing, crashing or hanging check is reported (with its error and log tail) and the
others still run; checks that no longer fit in --budget are reported as skipped. Prints a
table (stderr with --json) and one JSON object (stdout with --json; --out FILE too). Exit
status 1 if any check failed. Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (name, time limit in seconds, runs in the background) in the order they start.
CHECKS: list[tuple[str, int, bool]] = [
    ("env", 60, False),
    ("train_eager", 120, False),
    ("infer_slim", 120, False),
    ("train_slim", 120, False),
    ("ray_demo", 240, True),
    ("strategy_ddp", 90, False),
    ("strategy_deepspeed", 120, False),
    ("strategy_fsdp2", 90, False),
    ("decode", 120, False),
    ("train_compiled", 240, False),
]
MIN_START_S = 15  # a check with less time left than this is skipped, not started
LOG_TAIL_LINES = 30


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gpu",
        help="GPU readiness: sparse vs dense throughput, compile, DDP/DeepSpeed, decode, Ray",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = [name for name, _, _ in CHECKS]
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--budget", type=float, default=300.0, help="total seconds (300)")
    parser.add_argument("--only", nargs="+", choices=names, metavar="CHECK", help="run these")
    parser.add_argument("--workdir", type=Path, help="logs and scratch (default: temp, removed)")
    parser.add_argument("--serial", action="store_true", help="no check in the background")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try it out")
    parser.add_argument(
        "--size", default=None, choices=["full", "tiny"], help="default: full on cuda, tiny on cpu"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda") and not _cuda_available():
        result = {"command": "ft-dist bench gpu", "passed": None, "skipped": "no CUDA device"}
        print(
            "ft-dist bench gpu: no CUDA device on this machine (torch.cuda.is_available() is "
            "False): nothing to check. Run it on the GPU machine.",
            file=sys.stderr if args.json else sys.stdout,
        )
        _emit(result, args)
        return 0
    size = args.size or ("full" if args.device.startswith("cuda") else "tiny")
    selected = [c for c in CHECKS if args.only is None or c[0] in args.only]
    if args.workdir is not None:
        result = run_checks(selected, args.device, size, args.budget, args.workdir, args.serial)
    else:
        with tempfile.TemporaryDirectory(prefix="ft_dist_gpu_check_") as scratch:
            result = run_checks(
                selected, args.device, size, args.budget, Path(scratch), args.serial
            )
    print(format_table(result), file=sys.stderr if args.json else sys.stdout)
    _emit(result, args)
    return 0 if result["passed"] else 1


def _emit(result: dict[str, Any], args: argparse.Namespace) -> None:
    text = json.dumps(result, indent=1, default=str)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class Running:
    """A check's process: started in its own session so that a timeout ends all of it."""

    name: str
    process: subprocess.Popen
    started: float
    deadline: float
    log: Path
    result: Path
    concurrent: list[str] = field(default_factory=list)


def start_process(name: str, argv: list[str], timeout: float, workdir: Path) -> Running:
    workdir.mkdir(parents=True, exist_ok=True)
    log, result = workdir / f"{name}.log", workdir / f"{name}.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # the demo check starts its own local Ray
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            argv,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    now = time.monotonic()
    return Running(name, process, now, now + timeout, log, result)


def check_argv(name: str, device: str, size: str, workdir: Path) -> list[str]:
    return [
        sys.executable, "-m", "ft_dist.bench.gpu_checks", name, "--device", device,
        "--size", size, "--workdir", str(workdir / name), "--result", str(workdir / f"{name}.json"),
    ]  # fmt: skip


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the check's process group, SIGKILL it if still alive 10 s later."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def finish(running: Running) -> dict[str, Any]:
    """Wait for a check until its deadline; its result, or why there is none."""
    timed_out = False
    try:
        running.process.wait(timeout=max(0.0, running.deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        stop_group(running.process)
    seconds = time.monotonic() - running.started
    result = _read_result(running.result)
    if result is None or timed_out:
        limit = running.deadline - running.started
        why = f"timed out after {limit:.0f} s" if timed_out else (
            f"exited with code {running.process.returncode} without a result"
        )  # fmt: skip
        result = {"passed": False, "error": why, "summary": why, "goals": {}}
    result.setdefault("passed", False)
    result.update(seconds=round(seconds, 1), log=str(running.log))
    if running.concurrent:
        result["concurrent_with"] = running.concurrent
    if not result["passed"]:
        result["log_tail"] = _tail(running.log)
    return result


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return []


def run_checks(
    checks: list[tuple[str, int, bool]], device: str, size: str, budget: float, workdir: Path,
    serial: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Run the checks in order (background ones beside the rest) within ``budget`` seconds."""
    start = time.monotonic()
    deadline = start + budget
    results: dict[str, dict[str, Any]] = {}
    started: list[Running] = []
    try:
        for name, limit, in_background in checks:
            left = deadline - time.monotonic()
            if left < MIN_START_S:
                results[name] = _skipped(left)
                continue
            _progress(f"{name}: started (limit {min(limit, left):.0f} s)")
            argv = check_argv(name, device, size, workdir)
            running = start_process(name, argv, min(limit, left), workdir)
            alive = [r for r in started if r.process.poll() is None]
            running.concurrent = [r.name for r in alive]
            for other in alive:
                other.concurrent.append(name)
            started.append(running)
            if not (in_background and not serial):
                results[name] = _finished(running)
        for running in started:
            if running.name not in results:
                results[running.name] = _finished(running)
    finally:  # interrupted (Ctrl-C): leave no check running
        for running in started:
            if running.process.poll() is None:
                stop_group(running.process)
    ordered = {name: results[name] for name, _, _ in checks}
    return summarize(ordered, device, size, budget, time.monotonic() - start)


def _finished(running: Running) -> dict[str, Any]:
    result = finish(running)
    _progress(_line(running.name, result))
    return result


def _skipped(left: float) -> dict[str, Any]:
    why = f"skipped: {max(left, 0):.0f} s of the budget left (raise --budget)"
    return {"passed": None, "skipped": True, "summary": why, "goals": {}}


def _progress(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _line(name: str, result: dict[str, Any]) -> str:
    summary = result.get("summary", "")
    return f"{name}: {_status(result)} in {result.get('seconds', 0):.1f} s: {summary}"


def _status(result: dict[str, Any]) -> str:
    return "SKIP" if result["passed"] is None else ("PASS" if result["passed"] else "FAIL")


def summarize(
    checks: dict[str, dict[str, Any]], device: str, size: str, budget: float, elapsed: float
) -> dict[str, Any]:
    env = checks.get("env", {})
    goals = [met for result in checks.values() for met in result.get("goals", {}).values()]
    return {
        "command": "ft-dist bench gpu",
        "device": device,
        "size": size,
        "gpu": env.get("gpu"),
        "versions": env.get("versions"),
        "budget_s": budget,
        "elapsed_s": round(elapsed, 1),
        "checks": checks,
        "failed": [name for name, r in checks.items() if r["passed"] is False],
        "skipped": [name for name, r in checks.items() if r["passed"] is None],
        "passed": all(r["passed"] is True for r in checks.values()),
        "goals_met": all(goals),
    }


def format_table(result: dict[str, Any]) -> str:
    gpu, versions = result.get("gpu"), result.get("versions") or {}
    where = f"{gpu['name']} ({gpu['memory_gib']} GiB)" if gpu else f"device {result['device']}"
    libs = ", ".join(
        f"{k} {versions[k]}" for k in ("torch", "cuda", "cudnn", "nccl") if versions.get(k)
    )
    lines = [
        f"GPU check on {where}" + (f" | {libs}" if libs else ""),
        f"{'check':<20}{'result':<8}{'seconds':>8}  details",
    ]
    for name, check in result["checks"].items():
        seconds = f"{check['seconds']:.1f}" if "seconds" in check else "-"
        lines.append(f"{name:<20}{_status(check):<8}{seconds:>8}  {check.get('summary', '')}")
        for goal, met in check.get("goals", {}).items():
            lines.append(f"{'':<36}goal {'met' if met else 'MISSED'}: {goal}")
    checks = result["checks"].values()
    passed = sum(c["passed"] is True for c in checks)
    goals = [met for c in checks for met in c.get("goals", {}).values()]
    lines.append(
        f"overall: {'PASS' if result['passed'] else 'FAIL'} ({passed}/{len(result['checks'])} "
        f"checks passed), goals {sum(goals)}/{len(goals)} met, {result['elapsed_s']:.0f} s of "
        f"{result['budget_s']:.0f}"
    )
    return "\n".join(lines)
