"""Model names and their validation, without importing torch.

Config validation (`ModelConfig`) must be cheap and must not pull in torch, so the list of
known names and the parser for the open-ended ``wrn-D-W`` family live here, apart from the
builders.
"""

from __future__ import annotations

import re

# Fixed names; any "wrn-D-W" with (D - 4) divisible by 6 is accepted as well.
FIXED_MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "small-cnn")
EXAMPLE_WRN_NAMES = ("wrn-28-10", "wrn-16-4", "wrn-16-8", "wrn-28-2")

_WRN_PATTERN = re.compile(r"^wrn-(\d+)-(\d+)$")


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


def known_model_names() -> tuple[str, ...]:
    """Names to show in error messages and --help (the wrn family is open-ended)."""
    return FIXED_MODEL_NAMES + EXAMPLE_WRN_NAMES


def check_model_name(name: str) -> str:
    """Return `name` when a builder exists for it, else raise ValueError listing the choices."""
    if name in FIXED_MODEL_NAMES or parse_wrn_name(name) is not None:
        return name
    choices = ", ".join(known_model_names())
    raise ValueError(f"unknown model {name!r}: choose one of {choices} (or any wrn-D-W)")
