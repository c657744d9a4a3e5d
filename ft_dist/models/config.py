"""The `model:` section of a run config."""

from __future__ import annotations

from pydantic import Field, field_validator

from ft_dist.configbase import Section
from ft_dist.models.names import check_model_name


class ModelConfig(Section):
    """Which network to build; shape fields left as None are taken from the data manifest.

    Keeping num_classes / in_channels / image_size optional lets one config serve any
    dataset: the training entry point fills them from the shards it reads.
    """

    name: str = "wrn-28-10"
    num_classes: int | None = Field(default=None, ge=2)
    in_channels: int | None = Field(default=None, ge=1)
    image_size: int | None = Field(default=None, ge=4)

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        return check_model_name(name)

    def resolved(self, *, num_classes: int, in_channels: int, image_size: int) -> ModelConfig:
        """Fill the fields that are None with the given (manifest) values."""
        values = self.model_dump()
        defaults = {
            "num_classes": num_classes,
            "in_channels": in_channels,
            "image_size": image_size,
        }
        for key, default in defaults.items():
            if values[key] is None:
                values[key] = default
        return type(self).model_validate(values)
