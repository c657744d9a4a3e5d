"""The built-in corruptions (SPEC §7) by name, with the strength each severity sets.

Names and numbers only, no torch, so that `ft-dist evaluate --help` lists the corruptions
(cli/evaluate.py) from the table that ensemble/corruptions.py applies; the keys of
``CORRUPTION_LEVELS`` are the only list of names. Parameters follow CIFAR-10-C (Hendrycks &
Dietterich, 2019) where it has the corruption.
"""

from __future__ import annotations

from collections.abc import Sequence

SEVERITIES = (1, 2, 3, 4, 5)

# name -> the corruption's parameter at severity 1..5
CORRUPTION_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise sigma
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur sigma
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # contrast factor
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # side factor of the downscaled image
    "rotate": (5.0, 10.0, 15.0, 20.0, 25.0),  # degrees, random sign
}


def check_corruptions(names: Sequence[str], severities: Sequence[int]) -> None:
    """Reject unknown corruption names and severities with the allowed values."""
    unknown = [name for name in names if name not in CORRUPTION_LEVELS]
    if unknown:
        raise ValueError(
            f"--corruptions: unknown {unknown}; choose from {sorted(CORRUPTION_LEVELS)} (or 'all')"
        )
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ValueError(f"--severities: {bad} not in {list(SEVERITIES)}")
