"""The cluster-launcher YAML and the Makefile submit targets, checked without a cluster."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "launch" / "cluster.yaml").read_text())


def validate(config: dict) -> None:
    """What `ray up` checks first: Ray's own defaults filled in, then its JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_schema_and_a_broken_one_does_not(cluster_yaml: dict):
    validate(cluster_yaml)
    broken = copy.deepcopy(cluster_yaml)
    broken["available_node_types"]["gpu_8x"]["max_workers"] = "four"
    with pytest.raises(Exception, match="four"):
        validate(broken)


def test_every_node_starts_with_token_auth_and_the_token_is_shipped(cluster_yaml: dict):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cluster_yaml[key])
        assert "RAY_AUTH_MODE=token" in start and "ray start" in start, key
    assert "~/.ray/auth_token" in cluster_yaml["file_mounts"]
    assert cluster_yaml["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_cluster_installs_the_pinned_torch(cluster_yaml: dict):
    makefile = (REPO / "Makefile").read_text()
    pins = re.findall(r'"(torch(?:vision)?==[\d.]+)"', makefile)
    setup = " ".join(cluster_yaml["setup_commands"])
    assert pins and all(pin in setup for pin in pins)


@pytest.mark.parametrize(
    ("target", "variables", "message"),
    [
        ("imagenet-edst", {}, "set RAY_ADDRESS="),
        ("imagenet-dst-ensemble", {"RAY_ADDRESS": "http://127.0.0.1:1"}, "set DATA="),
    ],
)
def test_make_submit_targets_name_the_missing_variable(target, variables, message):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DATA")}
    env.update(variables)
    result = subprocess.run(
        ["make", "-s", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("imagenet-edst", "edst"),
        ("imagenet-dst-ensemble", "dst_ensemble"),
        ("imagenet-pdst", "dst_ensemble"),  # the old name still works
    ],
)
def test_make_submit_targets_submit_the_imagenet_config_with_the_data(target: str, kind: str):
    result = subprocess.run(
        ["make", "-n", target, "RAY_ADDRESS=http://head:8265", "DATA=/shared/in1k"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"launch/submit.sh configs/imagenet_{kind}.yaml data.root=/shared/in1k" in result.stdout
    assert (REPO / "configs" / f"imagenet_{kind}.yaml").is_file()
