"""A faster zero-padded random crop for small images (imports torchvision: load lazily)."""

from __future__ import annotations

from typing import Any

from torchvision.transforms import v2
from torchvision.transforms.v2 import functional


class ZeroPadRandomCrop(v2.RandomCrop):
    """``v2.RandomCrop(size, padding)`` with zero fill, cut straight from the unpadded image.

    ``functional.crop`` fills whatever lies outside the image with zeros (PIL's crop and
    torchvision's tensor crop both do), so the output is identical to pad-then-crop --
    same random draws (``make_params`` is RandomCrop's), same pixels -- without building
    the padded copy, which on 28-32 px images was a third of decode + transform.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if self.padding_mode != "constant" or self.fill not in (0, {}):
            return super().transform(inpt, params)
        pad_left, pad_top = params["padding"][0], params["padding"][1]
        top, left = params["top"] - pad_top, params["left"] - pad_left
        return functional.crop(inpt, top, left, params["height"], params["width"])
