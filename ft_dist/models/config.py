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
        return self.model_copy(
            update={
                "num_classes": self.num_classes if self.num_classes is not None else num_classes,
                "in_channels": self.in_channels if self.in_channels is not None else in_channels,
                "image_size": self.image_size if self.image_size is not None else image_size,
            }
        )
