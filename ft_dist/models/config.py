"""The `model:` section of a run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from ft_dist.configbase import Section
from ft_dist.models.names import check_model_name, is_file_spec, split_spec


class ModelConfig(Section):
    """Which network to build; shape fields left as None are taken from the data manifest.

    Keeping num_classes / in_channels / image_size optional lets one config serve any
    dataset: the training entry point fills them from the shards it reads.
    """

    name: str = Field(
        "wrn-28-10",
        description="a shipped model (resnet18/34/50, wrn-D-W, small-cnn), timm:NAME, "
        "torchvision:NAME, package.module:callable or path/to/file.py:callable",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keywords passed to the builder (timm: patch_size, depth, drop_path_rate)",
    )
    num_classes: int | None = Field(default=None, ge=2)
    in_channels: int | None = Field(default=None, ge=1)
    image_size: int | None = Field(default=None, ge=4)
    # Set by ft-dist on the driver for a path/to/file.py builder (`with_builder_source`): the
    # file's text, carried to every Ray worker in memory; never written to config.yaml, W&B
    # or a ticket (they record its sha256).
    source: str | None = Field(default=None, repr=False)

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


def with_builder_source(cfg: ModelConfig, base: Path) -> ModelConfig:
    """For a ``path/to/file.py:callable`` model: the path made absolute against ``base`` and
    the file's text in ``source``, so every Ray worker builds the model without the file."""
    from ft_dist.models.builders import read_builder_file

    spec = split_spec(cfg.name)
    if spec is None or not is_file_spec(spec[0]):
        return cfg
    # `base`: where the user ran ft-dist (FT_DIST_BASE_DIR under `ray job submit`); else the
    # job's unpacked working dir, the current directory of a submitted driver.
    given = Path(spec[0]).expanduser()
    candidates = [(Path(root) / given).resolve() for root in (base, Path.cwd())]
    path = next((c for c in candidates if c.is_file()), candidates[0])
    return cfg.model_copy(
        update={"name": f"{path}:{spec[1]}", "source": read_builder_file(str(path))}
    )


def model_config_from_meta(meta: dict[str, Any], where: str) -> ModelConfig:
    """The ModelConfig a ticket or checkpoint was trained with (its `model_facts`). A file
    builder is read again from its path and must be the file that trained the ticket."""
    from ft_dist.models.builders import read_builder_file, source_sha256

    cfg = ModelConfig(
        name=str(meta["model"]),
        kwargs=dict(meta.get("model_kwargs") or {}),
        num_classes=int(meta["num_classes"]),
        in_channels=int(meta["in_channels"]),
        image_size=int(meta["image_size"]),
    )
    spec = split_spec(cfg.name)
    if spec is None or not is_file_spec(spec[0]):
        return cfg
    source = read_builder_file(spec[0])
    expected = meta.get("model_source_sha256")
    if expected and source_sha256(source) != expected:
        raise ValueError(
            f"{where}: builder file {spec[0]} changed since this model was trained (sha256 "
            f"{source_sha256(source)[:12]}..., trained with {str(expected)[:12]}...); restore "
            "the file as it was"
        )
    return cfg.model_copy(update={"source": source})
