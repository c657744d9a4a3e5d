"""DST Ensemble on the local multi-node Ray cluster from launch/ (a head and a worker node
of 1 CPU each): members run concurrently on different nodes as Ray Tune trials; a failing
member costs the others nothing; re-running trains only what is missing; `evaluate`
ensembles the members' tickets.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import ray

from ft_dist.ensemble.pdst import fit_pdst, member_config
from ft_dist.ensemble.run_eval import EvalOptions, evaluate_run
from ft_dist.train.loop import train
from tests.launch.test_submit import cluster, cluster_env  # noqa: F401 (fixture)
from tests.train.conftest import tiny_config, tiny_mnist  # noqa: F401 (fixture)

pytestmark = [pytest.mark.ray, pytest.mark.slow]
cloudpickle.register_pickle_by_value(sys.modules[__name__])
BARRIER_TIMEOUT_S = 240.0


def loop_meeting_the_others(cfg, session, tracker):
    """The real loop, entered only once every member's loop is running: proves that the
    members run at the same time. Records the node each member ran on."""
    exp_dir = Path(cfg.train.output_dir).parent
    barrier = exp_dir / "barrier"
    barrier.mkdir(exist_ok=True)
    node = ray.get_runtime_context().get_node_id()
    (barrier / f"member_{cfg.train.member}.json").write_text(json.dumps({"node": node}))
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(barrier.glob("member_*.json"))) < cfg.ensemble.num_members:
        if time.monotonic() > deadline:
            raise TimeoutError("the other members never started: members did not run concurrently")
        time.sleep(0.5)
    return train(cfg, session, tracker)


def loop_failing_member_2(cfg, session, tracker):
    """The real loop, except that member 2 dies before training."""
    if cfg.train.member == 2:
        raise RuntimeError("member 2 crashed on purpose")
    return train(cfg, session, tracker)


@pytest.fixture(scope="module")
def ray_client(cluster: Path):  # noqa: F811
    """This process as a client of the multi-node cluster (token auth from cluster.env)."""
    env = cluster_env(cluster)
    saved = dict(os.environ)
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "OMP_NUM_THREADS"):
        os.environ[key] = env[key]
    ray.init(address=env["RAY_GCS_ADDRESS"])
    yield
    ray.shutdown()
    os.environ.clear()
    os.environ.update(saved)


def _pdst_config(root: Path, out: Path, name: str):
    return tiny_config(
        root,
        out,
        train={"epochs": 1, "run_name": name, "num_workers": 1},
        ray={"max_failures": 0},
        ensemble={"method": "pdst", "num_members": 2},
    )


def test_member_config_changes_member_and_paths(tiny_mnist: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = _pdst_config(tiny_mnist, tmp_path, "pdst")
    member = member_config(cfg, 2)
    assert member.train.member == 2 and member.train.run_name == "member_2"
    assert Path(member.train.output_dir) == tmp_path / "pdst" / "members"
    assert member.sparsity == cfg.sparsity and member.model == cfg.model
    with pytest.raises(ValueError, match="outside"):
        member_config(cfg, 3)


def test_members_run_concurrently_on_different_nodes(
    ray_client,
    tiny_mnist: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = _pdst_config(tiny_mnist, tmp_path, "together")
    exp_dir, outcomes = fit_pdst(cfg, loop_meeting_the_others)
    assert [o.error for o in outcomes] == [None, None], outcomes
    nodes = {json.loads(p.read_text())["node"] for p in (exp_dir / "barrier").glob("*.json")}
    assert len(nodes) == 2  # one member per 1-CPU node
    written = evaluate_run(exp_dir, EvalOptions(track=False, batch_size=64))
    report = json.loads(written["json"].read_text())
    assert report["layout"] == "experiment" and report["num_members"] == 2
    assert report["members"][0]["ticket"] == "members/member_1/tickets/ticket_01.pt"


def test_failed_member_loses_nothing_and_resumes(
    ray_client,
    tiny_mnist: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = _pdst_config(tiny_mnist, tmp_path, "failing")
    exp_dir, outcomes = fit_pdst(cfg, loop_failing_member_2)
    assert [o.member for o in outcomes] == [1, 2]
    assert outcomes[0].error is None and "crashed on purpose" in (outcomes[1].error or "")
    ticket_1 = exp_dir / "members" / "member_1" / "tickets" / "ticket_01.pt"
    assert ticket_1.is_file()
    assert not (exp_dir / "members" / "member_2" / "tickets").exists()
    before = ticket_1.read_bytes(), ticket_1.stat().st_mtime_ns

    exp_dir, outcomes = fit_pdst(cfg)  # member 1 is finished: only member 2 trains
    assert all(o.error is None for o in outcomes)
    assert (ticket_1.read_bytes(), ticket_1.stat().st_mtime_ns) == before
    assert (exp_dir / "members" / "member_2" / "tickets" / "ticket_01.pt").is_file()
