"""`ft-dist train` as a real process with the training replaced, for the tests that signal
it or run a second one beside it:

    python -m tests.cli.stub_train [--ray] CONFIG [key=value ...]

The CLI runs as ever (config, run lock, preflight, signals, the lines it prints, exit code);
`worker.fit` is replaced by a run that writes a checkpoint of step 40 and a config.yaml,
prints "TRAINING" on stdout and then waits 120 s: without --ray in time.sleep, with --ray
blocked in `ray.get` on a local Ray cluster that `connect` really starts (where Ray's own
SIGTERM handlers are installed).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ft_dist import preflight
from ft_dist.cli import main
from ft_dist.train import worker

STEP = 40


def fake_fit(cfg, group=None) -> Path:
    run = Path(cfg.train.output_dir) / cfg.train.run_name
    checkpoint = run / "checkpoints" / f"{STEP:09d}"
    checkpoint.mkdir(parents=True)
    meta = {"step": STEP, "total_steps": 64, "epochs_done": 2.5, "num_epochs": 4}
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    (run / "config.yaml").write_text(f"run_name: {cfg.train.run_name}\n")
    print("TRAINING", flush=True)
    if USE_RAY:
        import ray

        ray.get(ray.remote(num_cpus=0)(_sleep).remote(120))
    else:
        time.sleep(120)
    return run


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


USE_RAY = "--ray" in sys.argv[1:]

if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--ray"]
    if not USE_RAY:
        worker.connect = lambda address, log_to_driver=True: None
    preflight.check_cluster = lambda cfg: None
    worker.fit = fake_fit
    sys.exit(main(["train", *args]))
