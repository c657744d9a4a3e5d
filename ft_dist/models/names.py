"""Model names: which family a `model.name` belongs to, checked without importing torch.

Config validation (`ModelConfig`) must be cheap, so the syntax of every family's names lives
here, apart from the builders (`models/families.py`):

* shipped: ``resnet18``/``34``/``50``, ``small-cnn`` and any ``wrn-D-W``;
* ``timm:NAME`` and ``torchvision:NAME``;
* a user's builder: ``package.module:callable`` or ``path/to/file.py:callable``.
"""

from __future__ import annotations

import re

# Fixed names; any "wrn-D-W" with (D - 4) divisible by 6 is accepted as well.
FIXED_MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "small-cnn")
EXAMPLE_WRN_NAMES = ("wrn-28-10", "wrn-16-4", "wrn-16-8", "wrn-28-2")
LIBRARY_PREFIXES = ("timm", "torchvision")

_WRN_PATTERN = re.compile(r"^wrn-(\d+)-(\d+)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_wrn_name(name: str) -> tuple[int, int] | None:
    """Return (depth, width) for a "wrn-D-W" name, None when the name is not of that form.

    A Wide-ResNet has 3 groups of N basic blocks (2 convs each) plus the stem conv and the
    classifier, so depth = 6N + 4; other depths cannot be built and raise ValueError.
    """
    match = _WRN_PATTERN.match(name)
    if match is None:
        return None
    depth, width = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"model name {name!r}: Wide-ResNet depth must be 6N+4 with N >= 1 "
            f"(10, 16, 22, 28, 40, ...), got {depth}"
        )
    if width < 1:
        raise ValueError(f"model name {name!r}: Wide-ResNet width must be >= 1, got {width}")
    return depth, width


def split_spec(name: str) -> tuple[str, str] | None:
    """``"timm:vit_tiny"`` -> ("timm", "vit_tiny"); ``"pkg.mod:fn"`` -> ("pkg.mod", "fn");
    None for a name without a colon (a shipped model)."""
    target, sep, attr = name.rpartition(":")
    if not sep:
        return None
    return target, attr


def is_file_spec(target: str) -> bool:
    return target.endswith(".py")


def known_model_names() -> tuple[str, ...]:
    """Names to show in error messages and --help (the open families by example)."""
    return (
        FIXED_MODEL_NAMES
        + EXAMPLE_WRN_NAMES
        + ("timm:NAME", "torchvision:NAME", "package.module:callable", "path/to/file.py:callable")
    )


def check_model_name(name: str) -> str:
    """Return `name` when it is well formed for some family, else raise ValueError listing
    the choices. Whether a timm name, module or file exists is checked in preflight."""
    if name in FIXED_MODEL_NAMES or parse_wrn_name(name) is not None:
        return name
    spec = split_spec(name)
    if spec is not None:
        target, attr = spec
        if not target or not attr:
            raise ValueError(
                f"model.name={name!r}: give both sides of the colon, e.g. timm:resnet18"
            )
        if target in LIBRARY_PREFIXES:
            return name
        if not _IDENTIFIER.match(attr):
            raise ValueError(
                f"model.name={name!r}: {attr!r} is not a Python name; a builder is "
                "package.module:callable or path/to/file.py:callable"
            )
        if is_file_spec(target) or all(_IDENTIFIER.match(p) for p in target.split(".")):
            return name
        raise ValueError(
            f"model.name={name!r}: {target!r} is neither a dotted module name nor a .py file"
        )
    choices = ", ".join(known_model_names())
    raise ValueError(f"unknown model {name!r}: choose one of {choices} (or any wrn-D-W)")
