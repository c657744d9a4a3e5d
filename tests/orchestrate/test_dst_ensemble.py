"""DST Ensemble on the local multi-node Ray cluster from launch/ (a head and a worker node
of 1 CPU each): members run concurrently on different nodes as Ray Tune trials; a failing
member costs the others nothing; re-running with `ft-dist train` trains only what is
missing; `evaluate` ensembles the members' tickets. One scenario, to pay the cluster's
start-up and Ray Train's fixed cost per fit only once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ft_dist.config import save_config
from ft_dist.ensemble.run_eval import EvalOptions, evaluate_run
from ft_dist.orchestrate.dst_ensemble import member_config
from tests.launch.test_submit import cluster, cluster_env  # noqa: F401 (fixture)
from tests.train.conftest import tiny_config, tiny_mnist  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]


def _dst_ensemble_config(root: Path, out: Path, name: str):
    return tiny_config(
        root,
        out,
        train={"epochs": 1, "run_name": name, "num_workers": 1},
        ray={"max_failures": 0},
        ensemble={"method": "dst_ensemble", "num_members": 2},
    )


def _drive(cluster_dir: Path, config: Path, loop: str) -> list[dict]:
    """fit_dst_ensemble with a test loop, from a client process of the cluster."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.orchestrate.dst_ensemble_driver", str(config), loop],
        env=cluster_env(cluster_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_member_config_changes_member_and_paths(tiny_mnist: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = _dst_ensemble_config(tiny_mnist, tmp_path, "dst_ensemble")
    member = member_config(cfg, 2)
    assert member.train.member == 2 and member.train.run_name == "member_2"
    assert Path(member.train.output_dir) == tmp_path / "dst_ensemble" / "members"
    assert member.sparsity == cfg.sparsity and member.model == cfg.model
    with pytest.raises(ValueError, match="outside"):
        member_config(cfg, 3)


@pytest.mark.ray
@pytest.mark.slow
def test_members_run_concurrently_fail_alone_and_resume(
    cluster: Path,  # noqa: F811
    tiny_mnist: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = _dst_ensemble_config(tiny_mnist, tmp_path, "dst_ensemble")
    config = save_config(cfg, tmp_path / "pdst.yaml")
    exp_dir = tmp_path / "dst_ensemble"
    # Both members start together (a barrier in the loop), one per 1-CPU node; member 2
    # then crashes, member 1 trains to the end.
    outcomes = _drive(cluster, config, "meet_fail2")
    assert outcomes[0]["error"] is None and "crashed on purpose" in (outcomes[1]["error"] or "")
    nodes = {json.loads(p.read_text())["node"] for p in (exp_dir / "barrier").glob("*.json")}
    assert len(nodes) == 2
    ticket_1 = exp_dir / "members" / "member_1" / "tickets" / "ticket_01.pt"
    assert ticket_1.is_file()
    assert not (exp_dir / "members" / "member_2" / "tickets").exists()
    before = ticket_1.read_bytes(), ticket_1.stat().st_mtime_ns

    # The real CLI against the same cluster: member 1 is finished, only member 2 trains.
    env = cluster_env(cluster)
    rerun = subprocess.run(
        [str(Path(sys.executable).parent / "ft-dist"), "train", str(config)]
        + [f"ray.address={env['RAY_GCS_ADDRESS']}"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert rerun.stdout.strip().splitlines()[-1] == str(exp_dir)
    assert (ticket_1.read_bytes(), ticket_1.stat().st_mtime_ns) == before
    assert (exp_dir / "members" / "member_2" / "tickets" / "ticket_01.pt").is_file()

    written = evaluate_run(exp_dir, EvalOptions(track=False, batch_size=64))
    report = json.loads(written["json"].read_text())
    assert report["layout"] == "experiment" and report["num_members"] == 2
    assert report["members"][1]["ticket"] == "members/member_2/tickets/ticket_01.pt"
    assert 0.0 < report["diversity"]["mean_mask_jaccard"] < 1.0  # different seeds, masks


@pytest.mark.ray
@pytest.mark.slow
def test_members_queue_when_the_cluster_is_full(
    cluster: Path,  # noqa: F811
    tiny_mnist: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    # 3 members of one 1-CPU worker each on the 2-CPU cluster: Tune starts all 3 trials, but
    # only two members' workers fit; the third must wait for one of them to finish.
    cfg = tiny_config(
        tiny_mnist,
        tmp_path,
        data={"batch_size_per_worker": 128},  # 2 steps per epoch: the runs stay short
        train={"epochs": 1, "run_name": "queue", "num_workers": 1},
        ray={"max_failures": 0},
        ensemble={"method": "dst_ensemble", "num_members": 3},
    )
    exp_dir = tmp_path / "queue"
    outcomes = _drive(cluster, save_config(cfg, tmp_path / "queue.yaml"), "timeline")
    assert [(o["member"], o["error"]) for o in outcomes] == [(1, None), (2, None), (3, None)]
    for member in (1, 2, 3):
        ticket = exp_dir / "members" / f"member_{member}" / "tickets" / "ticket_01.pt"
        assert ticket.is_file()
    spans = sorted(
        (record["start"], record["end"])
        for record in (
            json.loads(p.read_text()) for p in (exp_dir / "timeline").glob("member_*.json")
        )
    )
    assert len(spans) == 3
    # Sweep the starts and ends in time order (an end before a start at the same instant).
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = [sum(step for _, step in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2, spans  # two at once (the cluster's CPUs), never three
    (first, second, (last_start, _)) = spans
    assert last_start >= min(first[1], second[1]), spans  # the last one queued
