"""One test per private dependency API in ft_dist/private_api.py: each fails, by name, when an
upgrade moves or renames what ft_dist relies on; and nothing outside private_api.py uses one."""

from __future__ import annotations

import importlib
import pickle
import pickletools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ft_dist import private_api

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ft_dist"
PRIVATE = re.compile(
    r"^\s*(from|import)\s+(ray\._private|ray\.\S*\._internal|torch\._|torch\.utils\._|"
    r"deepspeed\.\S*\._)"
)
# Private classes and attributes reached without a private import: torch's norm and conv
# bases, the torch.compile wrapper's attribute (or its name as a string), numpy's _core.
PRIVATE_ATTRIBUTE = re.compile(
    r"\._(BatchNorm|InstanceNorm|ConvNd|orig_mod)\b|[\"']_orig_mod\b|numpy\._core"
)


def test_no_private_import_outside_private_api() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "private_api.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.match(line)
    ]
    assert offenders == []


def test_no_private_attribute_outside_private_api() -> None:
    here = Path(__file__).resolve()
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        if path.name != "private_api.py" and path.resolve() != here
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_ATTRIBUTE.search(line)
    ]
    assert offenders == []


def test_private_api_imports_without_torch() -> None:
    code = "import sys, ft_dist.private_api; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_dispatch_mode_sees_aten_ops() -> None:
    seen = []

    class Record(private_api.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Record():
        torch.ones(2, 3) @ torch.ones(3, 4)
    assert torch.ops.aten.mm.default in seen


def test_ray_worker_group_start_timeout_class_is_where_we_import_it() -> None:
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    assert not private_api.is_worker_group_start_timeout(RuntimeError("other"))
    assert private_api.is_worker_group_start_timeout(
        WorkerGroupStartupTimeoutError.__new__(WorkerGroupStartupTimeoutError)
    )


def test_ray_autoscaler_limit_reader_exists() -> None:
    # Calling it needs a connected Ray (tests/train/test_failures_ray.py does); here: it is
    # still there with the name private_api.autoscaler_max_resources calls.
    from ray._private.state import state

    assert callable(state.get_max_resources_from_cluster_config)


def test_dynamo_graph_counter_counts_a_compile() -> None:
    before = private_api.dynamo_graph_count()
    torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(3))
    assert private_api.dynamo_graph_count() == before + 1


def test_zero_wrapped_optimizer_unwraps_a_wrapper_and_passes_a_torch_optimizer() -> None:
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)

    class Wrapper:  # the shape of DeepSpeed's ZeRO optimizers: the torch one in .optimizer
        optimizer = sgd

    assert private_api.zero_wrapped_optimizer(sgd) is sgd
    assert private_api.zero_wrapped_optimizer(Wrapper()) is sgd


def test_link_zero_optimizer_state_names_deepspeeds_own_method() -> None:
    """The ZeRO-1/2 optimizer still has the lazy link method the helper calls."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    assert callable(DeepSpeedZeroOptimizer._lazy_init_hp_params_optimizer_state)
    calls = []

    class Zero:
        def _lazy_init_hp_params_optimizer_state(self) -> None:
            calls.append(True)

    private_api.link_zero_optimizer_state(Zero())
    private_api.link_zero_optimizer_state(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1))
    assert calls == [True]


def test_batch_norm_base_matches_every_batch_norm_and_nothing_else() -> None:
    base = private_api.batch_norm_base()
    norms = [nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2)]
    assert all(isinstance(norm, base) for norm in norms)
    assert not isinstance(nn.InstanceNorm2d(2), base)
    assert not isinstance(nn.LayerNorm(2), base) and not isinstance(nn.GroupNorm(1, 2), base)


def test_instance_norm_base_matches_every_instance_norm_and_nothing_else() -> None:
    base = private_api.instance_norm_base()
    norms = [nn.InstanceNorm1d(2), nn.InstanceNorm2d(2), nn.InstanceNorm3d(2)]
    assert all(isinstance(norm, base) for norm in norms)
    assert not isinstance(nn.BatchNorm2d(2), base) and not isinstance(nn.LayerNorm(2), base)


def test_conv_base_matches_convolutions_with_the_attributes_we_read() -> None:
    base = private_api.conv_base()
    convs = [
        nn.Conv1d(2, 2, 1),
        nn.Conv2d(2, 2, 1),
        nn.Conv3d(2, 2, 1),
        nn.ConvTranspose2d(2, 2, 1),
    ]
    assert all(isinstance(conv, base) for conv in convs)
    assert not isinstance(nn.Linear(2, 2), base)
    for conv in convs:  # what sparse/structure.py reads of a convolution
        assert {"groups", "in_channels", "out_channels", "transposed"} <= set(vars(conv))


def test_compiled_module_attribute_and_parameter_prefix() -> None:
    model = nn.Linear(2, 2)
    compiled = torch.compile(model, backend="eager")  # compiles on the first call only
    assert private_api.compiled_inner_module(compiled) is model
    assert private_api.compiled_inner_module(model) is None
    names = [name for name, _ in compiled.named_parameters()]
    assert names == [f"{private_api.COMPILED_PARAMETER_PREFIX}{n}" for n in ("weight", "bias")]


def test_numpy_pickles_name_a_listed_module_that_loads() -> None:
    for value in (np.arange(3), np.float32(1.5)):  # an array (_reconstruct) and a scalar
        data = pickle.dumps(value, protocol=2)
        found = {
            arg.split(" ")[0]
            for op, arg, _ in pickletools.genops(data)
            if op.name == "GLOBAL" and arg.split(" ")[1] in ("_reconstruct", "scalar")
        }
        assert found and found <= set(private_api.NUMPY_PICKLE_MODULES)
    for module in private_api.NUMPY_PICKLE_MODULES:  # old pickles (CIFAR's) name the other
        loaded = importlib.import_module(module)
        assert callable(loaded._reconstruct) and callable(loaded.scalar)
