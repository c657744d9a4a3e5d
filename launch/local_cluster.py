#!/usr/bin/env python3
"""A multi-node Ray cluster on one machine: a head and worker nodes, each its own raylet
with its own CPU count, so scheduling across nodes (DST Ensemble members, spread workers) can be
exercised without a cloud account. Torn down by process id, never by name.

    python launch/local_cluster.py up [--dir D] [--worker-nodes 2] [--worker-cpus 1]
    source D/cluster.env          # RAY_ADDRESS (job submission) + token auth for clients
    launch/submit.sh configs/demo_dst.yaml train.run_name=demo
    python launch/local_cluster.py down [--dir D]
    python launch/local_cluster.py kill-node --index 2 [--dir D]   # a lost spot node
    python launch/local_cluster.py start-node --index 2 [--dir D]  # ... that comes back

Token auth (Ray >= 2.5x): every node is started with RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN_PATH pointing at a fresh 256-bit token in D/auth_token (mode 0600), so
the cluster rejects unauthenticated clients. Ray clients find the token, in this order,
in RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, but only
send it when RAY_AUTH_MODE=token is set in their environment; D/cluster.env sets both.

Each node runs as `ray start --block` in its own session; `down` sends SIGTERM to those
processes (Ray then stops that node's gcs/raylet/dashboard/workers) and SIGKILLs their
process groups if anything is still alive after a grace period. Nothing else on the
machine is touched, unlike `ray stop`, which stops every Ray process of the user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEFAULT_DIR = Path("/tmp") / f"ft_dist_cluster_{os.getuid()}"  # short: Ray sockets live below
STATE_FILE = "cluster.json"
ENV_FILE = "cluster.env"
TOKEN_FILE = "auth_token"
CLUSTER_ENV_VAR = "FT_DIST_LOCAL_CLUSTER"  # set in every node's environment: tells our processes
NODE_ENV_VAR = "FT_DIST_LOCAL_NODE"  # the node index (0 = head): tells one node's processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_env(root: Path, token_path: Path) -> dict[str, str]:
    """Environment of every node (and so of every Ray worker and job driver on it)."""
    env = dict(os.environ)
    env[CLUSTER_ENV_VAR] = str(root)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    # On SIGTERM a node drains before stopping, by default for up to 30 s while any actor
    # (e.g. Ray Train's detached state actor) lives; nothing here needs that long.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "3")
    env.pop("RAY_ADDRESS", None)  # `ray start --head` must not join another cluster
    venv_bin = str(Path(sys.executable).parent)  # so job entrypoints find `ft-dist`
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    return env


def start_node(args: list[str], env: dict[str, str], log: Path) -> int:
    """`ray start --block ARGS` in a new session; returns its pid (= its process group)."""
    ray = str(Path(sys.executable).parent / "ray")
    command = [ray, "start", "--block", "--disable-usage-stats", *args]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process.pid


def alive_nodes(dashboard: str, token: str) -> int:
    """Number of ALIVE nodes according to the dashboard's state API (0 if not up yet)."""
    request = urllib.request.Request(
        f"{dashboard}/api/v0/nodes?limit=100", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            payload = json.load(response)
    except (OSError, ValueError):
        return 0
    nodes = payload.get("data", {}).get("result", {}).get("result", [])
    return sum(1 for node in nodes if node.get("state") == "ALIVE")


def wait_for_nodes(dashboard: str, token: str, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive_nodes(dashboard, token) >= expected:
            return
        time.sleep(1.0)
    raise RuntimeError(
        f"only {alive_nodes(dashboard, token)}/{expected} nodes up after {timeout_s}s"
    )


def http_json(url: str, token: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_for_job_api(dashboard: str, token: str, timeout_s: float) -> None:
    """Submit a no-op job until one succeeds: nodes can be ALIVE while the head's job agent
    is still starting ("No available agent to submit job"), which a user's first
    `ray job submit` would otherwise hit."""
    deadline = time.monotonic() + timeout_s
    job_id = None
    while time.monotonic() < deadline:
        try:
            if job_id is None:
                job_id = http_json(f"{dashboard}/api/jobs/", token, {"entrypoint": "true"})[
                    "job_id"
                ]
            status = http_json(f"{dashboard}/api/jobs/{job_id}", token)["status"]
        except (OSError, ValueError, KeyError):
            status = None  # not ready yet: retry
        if status == "SUCCEEDED":
            return
        if status in ("FAILED", "STOPPED"):
            job_id = None
        time.sleep(1.0)
    raise RuntimeError(f"the job API at {dashboard} did not run a job within {timeout_s}s")


def write_env_file(root: Path, state: dict) -> Path:
    lines = [
        "# source this file: clients of the local ft_dist Ray cluster",
        f"export RAY_ADDRESS={state['dashboard']}  # ray job submit / launch/submit.sh",
        f"export RAY_GCS_ADDRESS={state['gcs']}  # ray.init / ft-dist train ray.address=...",
        "export RAY_AUTH_MODE=token",
        f"export RAY_AUTH_TOKEN_PATH={root / TOKEN_FILE}",
    ]
    path = root / ENV_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def node_args(args: argparse.Namespace, root: Path, state: dict, index: int) -> list[str]:
    """`ray start` arguments of node `index` (0 = head). Port 0 = any free port: Ray's
    fixed defaults (agent 52365, metrics, client 10001) would collide with any other Ray
    cluster on this machine. Each node gets its own temp dir: nodes started together would
    otherwise pick the same socket names in a shared session dir ("address in use")."""
    common = ["--node-ip-address", "127.0.0.1", "--temp-dir", str(root / f"node{index}")]
    common += ["--object-store-memory", str(args.object_store_mb * 1024 * 1024)]
    common += ["--dashboard-agent-listen-port", "0", "--metrics-export-port", "0"]
    if index > 0:
        return ["--address", state["gcs"], "--num-cpus", str(args.worker_cpus), *common]
    gcs_port, dashboard_port = state["gcs"].rsplit(":", 1)[1], state["dashboard"].rsplit(":", 1)[1]
    head = ["--head", "--port", gcs_port, "--num-cpus", str(args.head_cpus)]
    head += ["--dashboard-host", "127.0.0.1", "--dashboard-port", dashboard_port]
    head += ["--ray-client-server-port", str(free_port())]
    return head + common


def up(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    if load_state(root) is not None:
        print(f"a cluster is already recorded in {root}; run `down --dir {root}` first")
        return 1
    root.mkdir(parents=True, exist_ok=True)
    token_path = root / TOKEN_FILE
    token = secrets.token_hex(32)
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = node_env(root, token_path)
    state = {
        "gcs": f"127.0.0.1:{free_port()}",
        "dashboard": f"http://127.0.0.1:{free_port()}",
        "pids": [],
        "worker_cpus": args.worker_cpus,
        "object_store_mb": args.object_store_mb,
    }
    try:
        for index in range(1 + args.worker_nodes):
            log = root / ("head.log" if index == 0 else f"worker_{index}.log")
            node = {**env, NODE_ENV_VAR: str(index)}
            state["pids"].append(start_node(node_args(args, root, state, index), node, log))
            save_state(root, state)  # from here on, `down` can clean up what was started
            if index == 0:  # workers join a running head
                wait_for_nodes(state["dashboard"], token, 1, args.timeout)
        wait_for_nodes(state["dashboard"], token, 1 + args.worker_nodes, args.timeout)
        wait_for_job_api(state["dashboard"], token, args.timeout)
    except (RuntimeError, KeyboardInterrupt):
        stop(root, state)
        raise
    env_file = write_env_file(root, state)
    print(
        f"Ray cluster up: 1 head ({args.head_cpus} CPU) + {args.worker_nodes} worker nodes "
        f"({args.worker_cpus} CPU each); dashboard {state['dashboard']}"
    )
    print(f"clients: source {env_file}")
    return 0


def save_state(root: Path, state: dict) -> None:
    (root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def load_state(root: Path) -> dict | None:
    path = root / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_of(root: Path, node: int | None = None) -> list[int]:
    """Pids of this cluster's processes (of node `node` only, when given): every node
    process, Ray worker and job driver inherits CLUSTER_ENV_VAR=root (and NODE_ENV_VAR)
    from `ray start` (Ray renames its workers `ray::...`, so their command lines cannot
    tell). Client shells never get it: cluster.env omits it."""
    markers = [f"{CLUSTER_ENV_VAR}={root}\0".encode()]
    if node is not None:
        markers.append(f"\0{NODE_ENV_VAR}={node}\0".encode())
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = b"\0" + (proc / "environ").read_bytes()
        except OSError:
            continue
        if all(marker in environ for marker in markers):
            pids.append(int(proc.name))
    return pids


def kill_node(args: argparse.Namespace) -> int:
    """SIGKILL every process of worker node `--index` (its raylet, object store, workers):
    the node is lost as a preempted spot machine is, with no graceful drain."""
    root = Path(args.dir).resolve()
    state = load_state(root)
    if state is None or not 0 < args.index < len(state["pids"]):
        print(f"no worker node {args.index} recorded in {root}")
        return 1
    deadline = time.monotonic() + 10.0
    while (pids := processes_of(root, args.index)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    if pids:
        print(f"node {args.index} still has processes {pids}")
        return 1
    print(f"node {args.index} killed")
    return 0


def start_node_again(args: argparse.Namespace) -> int:
    """Start worker node `--index` again (after kill-node) and join it to the head."""
    root = Path(args.dir).resolve()
    state = load_state(root)
    if state is None or not 0 < args.index < len(state["pids"]):
        print(f"no worker node {args.index} recorded in {root}")
        return 1
    if processes_of(root, args.index):
        print(f"node {args.index} is running")
        return 1
    token = (root / TOKEN_FILE).read_text()
    expected = alive_nodes(state["dashboard"], token) + 1
    options = argparse.Namespace(
        worker_cpus=state["worker_cpus"], object_store_mb=state["object_store_mb"]
    )
    env = {**node_env(root, root / TOKEN_FILE), NODE_ENV_VAR: str(args.index)}
    log = root / f"worker_{args.index}.log"
    state["pids"][args.index] = start_node(node_args(options, root, state, args.index), env, log)
    save_state(root, state)
    wait_for_nodes(state["dashboard"], token, expected, args.timeout)
    print(f"node {args.index} up")
    return 0


def stop(root: Path, state: dict, grace_s: float = 30.0) -> None:
    """SIGTERM every node's `ray start --block` at once (each then drains and stops its
    gcs/raylet/dashboard/workers), wait, then SIGKILL what is left: their process groups,
    and any straggler whose command line still points into this cluster's directory."""
    pids = [pid for pid in state["pids"] if is_alive(pid)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in state["pids"]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # leftovers of that node's process group
    deadline = time.monotonic() + 10.0
    while processes_of(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in processes_of(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    (root / STATE_FILE).unlink(missing_ok=True)
    (root / ENV_FILE).unlink(missing_ok=True)


def down(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    state = load_state(root)
    if state is None:
        print(f"no cluster recorded in {root}")
        return 0
    stop(root, state)
    print(f"Ray cluster in {root} stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    state = load_state(root)
    if state is None:
        print(f"no cluster recorded in {root}")
        return 1
    token = (root / TOKEN_FILE).read_text()
    print(f"{alive_nodes(state['dashboard'], token)} nodes alive; dashboard {state['dashboard']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=str(DEFAULT_DIR), help="state, logs, token, env file")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", parents=[common], help="start a head and worker nodes")
    start.add_argument("--worker-nodes", type=int, default=2)
    start.add_argument("--head-cpus", type=int, default=1)
    start.add_argument("--worker-cpus", type=int, default=1)
    start.add_argument("--object-store-mb", type=int, default=100)
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for nodes")
    start.set_defaults(func=up)
    stop_parser = sub.add_parser("down", parents=[common], help="stop the nodes `up` started")
    stop_parser.set_defaults(func=down)
    sub.add_parser("status", parents=[common], help="count alive nodes").set_defaults(func=status)
    kill = sub.add_parser("kill-node", parents=[common], help="SIGKILL one worker node")
    kill.add_argument("--index", type=int, required=True, help="1 = the first worker node")
    kill.set_defaults(func=kill_node)
    again = sub.add_parser("start-node", parents=[common], help="start a killed worker node")
    again.add_argument("--index", type=int, required=True)
    again.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it")
    again.set_defaults(func=start_node_again)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
