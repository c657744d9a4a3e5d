"""`ft-dist bench gpu` check: the demo EDST run end to end through Ray on the GPU.

As a user would run it, each step a `ft-dist` subprocess: bundled MNIST shards
(`ft-dist shards mnist`), `ft-dist train configs/demo_edst.yaml` shortened (1 exploration
epoch, M = 2 tickets of 2 epochs, one Ray Train worker holding the GPU with
``ray.use_gpu=true``, bf16 + channels_last), `ft-dist evaluate` on the GPU, and
`ft-dist export` of the tickets. A worker that asks Ray for a GPU the cluster does not
have never starts, so a finished run shows the GPU was found and used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ft_dist
from ft_dist.layout import summary_path

DEMO_CONFIG = Path(ft_dist.__file__).resolve().parent.parent / "configs" / "demo_edst.yaml"
NUM_MEMBERS = 2


def demo_overrides(data: Path, runs: Path, use_gpu: bool) -> list[str]:
    """The demo config, shortened and pointed at ``data``/``runs`` (validated by the tests)."""
    overrides = [
        f"data.root={data}",
        "data.batch_size_per_worker=128",
        f"train.output_dir={runs}",
        "train.run_name=gpu-check",
        "train.num_workers=1",
        f"ensemble.num_members={NUM_MEMBERS}",
        "ensemble.edst.exploration_epochs=1",
        "ensemble.edst.refinement_epochs=2",
        "tracking.wandb=disabled",
        f"ray.use_gpu={str(use_gpu).lower()}",
    ]
    if use_gpu:
        overrides += ["ray.gpus_per_worker=1", "train.bf16=true", "train.channels_last=true"]
    return overrides


def ft_dist_command(*args: str) -> list[str]:
    """`ft-dist ARGS` with this interpreter (works whether or not the script is on PATH)."""
    entry = "import sys; from ft_dist.cli import main; sys.exit(main())"
    return [sys.executable, "-c", entry, *args]


def run_step(name: str, argv: list[str], log_dir: Path, steps: list[dict[str, Any]]) -> str:
    """Run one command to completion, log it, record it; its stdout, or RuntimeError."""
    start = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own, never someone's cluster
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False
    )
    log = log_dir / f"{name}.log"
    log.write_text(f"$ {' '.join(argv)}\n{done.stdout}\n--- stderr ---\n{done.stderr}")
    steps.append({"step": name, "seconds": round(time.monotonic() - start, 1), "log": str(log)})
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{name} exited with {done.returncode} (log {log}):\n" + "\n".join(tail))
    return done.stdout


def check_ray_demo(device, sizes, workdir: Path) -> dict[str, Any]:
    if not DEMO_CONFIG.is_file():
        raise FileNotFoundError(f"{DEMO_CONFIG} is missing: run the check from a checkout")
    data, runs, steps = workdir / "data", workdir / "runs", []
    run_step("shards", ft_dist_command("shards", "mnist", "--out", str(data)), workdir, steps)
    overrides = demo_overrides(data, runs, use_gpu=device.type == "cuda")
    out = run_step("train", ft_dist_command("train", str(DEMO_CONFIG), *overrides), workdir, steps)
    run_dir = Path(out.strip().splitlines()[-1])
    summary = json.loads(summary_path(run_dir).read_text())
    evaluate = ft_dist_command("evaluate", str(run_dir), "--device", str(device), "--no-wandb")
    report = Path(run_step("evaluate", evaluate, workdir, steps).strip().splitlines()[-1])
    ensemble = json.loads(report.read_text())["ensemble"]["test"]
    export = ft_dist_command("export", str(run_dir), "--out", str(workdir / "export"), "--json")
    exported = json.loads(run_step("export", export, workdir, steps).strip().rsplit("\n", 1)[0])
    tickets = summary.get("tickets", [])
    timings = ", ".join(f"{step['step']} {step['seconds']:.0f} s" for step in steps)
    return {
        "passed": len(tickets) == NUM_MEMBERS and ensemble["accuracy"] > 0.5,
        "run_dir": str(run_dir),
        "steps": steps,
        "tickets": tickets,
        "train_images_per_s": summary.get("images_per_s"),
        "ensemble_test": ensemble,
        "export": exported,
        "summary": f"{len(tickets)} tickets, ensemble accuracy {ensemble['accuracy']:.4f}, "
        f"train {summary.get('images_per_s', 0):.0f} img/s, export "
        f"{exported['sparse_vs_one_dense']:.2f}x one dense; {timings}",
    }
