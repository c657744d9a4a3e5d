"""Builders from outside ft_dist: timm, torchvision and a user's own callable.

Every builder returns a randomly initialised ``nn.Module`` for the run's class count, input
channels and image size (`ModelConfig`), with ``model.kwargs`` passed through.

A user's file builder (``path/to/file.py:callable``) travels as text: the driver reads the
file once (`with_builder_source`) and the config object handed to every Ray worker carries
it, so no worker needs the file on its disk. The text is never written to config.yaml or a
ticket (a ticket records its sha256 instead; `evaluate` and `export` re-read the file and
refuse one that changed since training).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ft_dist.models.names import is_file_spec, split_spec


def _no_such_model(library: str, name: str, names: Sequence[str]) -> ValueError:
    """The error for a ``library:name`` the library does not have, with its closest names."""
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return ValueError(f"model.name={library}:{name}: {library} has no model {name!r}{hint}")


# --------------------------------------------------------------------------- timm
def check_timm_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise _no_such_model("timm", name, timm.list_models())


def build_timm(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs):
    """``timm.create_model`` without pretrained weights; ``img_size`` is passed to models
    that take one (ViTs, ...), not to those that do not (CNNs)."""
    import timm

    check_timm_name(name)
    kwargs = {"num_classes": num_classes, "in_chans": in_channels, **kwargs}
    if "img_size" not in kwargs:
        try:
            return timm.create_model(name, pretrained=False, img_size=image_size, **kwargs)
        except TypeError as error:
            if "img_size" not in str(error):
                raise
    return timm.create_model(name, pretrained=False, **kwargs)


# --------------------------------------------------------------------------- torchvision
def check_torchvision_name(name: str) -> None:
    from torchvision import models

    names = models.list_models()
    if name not in names:
        raise _no_such_model("torchvision", name, names)


def build_torchvision(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs):
    """``torchvision.models.get_model`` without weights. ``image_size`` goes to models that
    take one (ViTs); for ``in_channels != 3`` the first 3-channel convolution is replaced by
    one of the same shape for ``in_channels``."""
    from torchvision import models

    check_torchvision_name(name)
    kwargs = {"weights": None, "num_classes": num_classes, **kwargs}
    try:
        model = models.get_model(name, image_size=image_size, **kwargs)
    except TypeError as error:
        if "image_size" not in str(error):
            raise
        model = models.get_model(name, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, name, in_channels)
    return model


def _replace_first_conv(model: nn.Module, name: str, in_channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    dilation=child.dilation,
                    groups=1,
                    bias=child.bias is not None,
                )
                setattr(parent, child_name, conv)
                return
    raise ValueError(
        f"model.name=torchvision:{name}: found no 3-channel input convolution to adapt to "
        f"{in_channels} channels; use timm:NAME (in_chans) or your own builder"
    )


# --------------------------------------------------------------------------- a user's builder
def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def read_builder_file(target: str) -> str:
    path = Path(target)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.name: builder file {target} not found; give path/to/file.py:callable "
            "relative to the directory you run ft-dist from, or an absolute path"
        )
    return path.read_text()


def _module_from_source(source: str, filename: str) -> types.ModuleType:
    """Execute a builder file's text as a module (registered in sys.modules under a name
    derived from its hash, so classes it defines can be pickled within this process)."""
    name = f"ft_dist_user_model_{source_sha256(source)[:16]}"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__file__ = filename
        sys.modules[name] = module
        try:
            exec(compile(source, filename, "exec"), module.__dict__)
        except Exception:
            del sys.modules[name]
            raise
    return module


def load_builder(spec: str, source: str | None = None) -> Callable[..., Any]:
    """The callable named by ``package.module:callable`` or ``path/to/file.py:callable``
    (``source``: the file's text, when the driver shipped it)."""
    parsed = split_spec(spec)
    if parsed is None:
        raise ValueError(f"model.name={spec!r} is not a builder (module:callable)")
    target, attr = parsed
    if is_file_spec(target):
        module = _module_from_source(source or read_builder_file(target), target)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            raise ValueError(
                f"model.name={spec}: cannot import {target!r} ({error}); install it on every "
                "node, or submit with `ray job submit --working-dir DIR` holding it"
            ) from None
    builder = getattr(module, attr, None)
    if builder is None or not callable(builder):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(
            f"model.name={spec}: {target} has no callable {attr!r}; callables there: "
            f"{', '.join(found) or 'none'}"
        )
    return builder


def build_user(
    spec: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    source: str | None = None,
    **kwargs,
) -> nn.Module:
    builder = load_builder(spec, source)
    keywords = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    try:
        inspect.signature(builder).bind(**keywords, **kwargs)
    except TypeError as error:
        raise ValueError(
            f"model.name={spec}: the builder cannot be called with "
            f"{', '.join([*keywords, *kwargs])} ({error}); define it as "
            "def build(num_classes, in_channels, image_size, **kwargs)"
        ) from None
    model = builder(**keywords, **kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model.name={spec}: the builder returned {type(model).__name__}, not a torch "
            "nn.Module; return the network"
        )
    return model
