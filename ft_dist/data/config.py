"""The `data:` section of a run config.

A training config points ``data.root`` at a dataset written by ``ft-dist shards``; the
number of classes, the image size and the channel count come from that dataset's
manifests, so the same config runs on MNIST, CIFAR or ImageNet shards by changing one line.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ft_dist.configbase import Section
from ft_dist.data.transforms import RECIPES  # no torch: transforms import it when they run
from ft_dist.utils import known_name


class DataConfig(Section):
    """Where the shards are and how they are streamed, decoded and augmented.

    ``root`` is one of:

    * a local directory written by ``ft-dist shards`` (``ROOT/<split>/manifest.json`` and
      the shard files it lists);
    * a URL prefix with the same layout: ``file://``, ``http(s)://``, ``gs://``, or
      ``s3://`` (read through ``pipe:aws s3 cp URL -``);
    * a ``pipe:`` command template containing ``{path}``, for any other store, e.g.
      ``pipe:aws s3 cp s3://bucket/imagenet/{path} -`` -- ``{path}`` becomes
      ``<split>/manifest.json`` or ``<split>/<shard name>``.
    """

    root: str = Field(description="dataset written by `ft-dist shards` (dir, URL or pipe:)")
    train_split: str = "train"
    val_split: str | None = Field("val", description="model selection split; None = none")
    test_split: str | None = Field("test", description="final evaluation split; None = none")
    recipe: str | None = Field(
        None,
        description=f"named recipe, an entry of data/transforms.py RECIPES ({', '.join(RECIPES)}; "
        "cifar = CIFAR-10); None = the manifest's hint, else one derived from the manifest "
        "(mode, native size, train-split mean/std)",
    )
    image_size: int | None = Field(
        None,
        ge=4,
        description="side of the tensors fed to the model; None = recipe default "
        "(the images' native side for derived recipes)",
    )
    batch_size_per_worker: int = Field(
        128, ge=1, description="examples per step on each rank; global batch = this × ranks"
    )
    eval_batch_size: int | None = Field(None, ge=1, description="None = batch_size_per_worker")
    loader_workers: int = Field(
        2, ge=0, description="DataLoader processes per rank (0 = decode in the rank itself)"
    )
    shuffle_buffer: int = Field(1000, ge=0, description="samples held for shuffling; 0 = off")
    prefetch_factor: int = Field(2, ge=1, description="batches prefetched per loader worker")
    loader_start_method: Literal["fork", "forkserver", "spawn"] = Field(
        "fork",
        description="how loader workers start: fork takes milliseconds; spawn/forkserver "
        "re-import torch in every worker, every epoch (seconds)",
    )
    pin_memory: bool = Field(True, description="pin batches when training on CUDA")
    decode_device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="training stream: cpu = PIL decode + augment in loader workers; cuda = "
        "batched nvJPEG decode + augment on the rank's GPU, in the rank itself (needs "
        "loader_workers=0, pin_memory=false); evaluation always decodes on the CPU. "
        "`ft-dist bench gpu` measures which is faster",
    )
    skip_corrupt: bool = Field(
        False,
        description="training only: count, log and replace undecodable samples (by another "
        "sample of the same batch) instead of stopping; evaluation always stops",
    )
    verify: Literal["checksum", "full", "size"] = Field(
        "checksum",
        description="before training, on the driver: checksum = sha256 of each local shard "
        "once, then again only if its size/mtime/ctime or manifest digest changed (stamp "
        "file next to the manifest; catches in-place edits, not silent bit rot); full = "
        "sha256 of every shard on every start; size = sizes only. Remote shards are hashed "
        "while they stream",
    )
    seed: int = Field(
        0, description="data order and augmentation seed; TrainStream(seed=...) overrides it"
    )

    @field_validator("root")
    @classmethod
    def _root_not_empty(cls, root: str) -> str:
        if not root.strip():
            raise ValueError(
                "data.root is empty: set it to a dir written by `ft-dist shards` "
                "(e.g. data/mnist after `ft-dist shards mnist --out data/mnist`)"
            )
        if root.startswith("pipe:") and "{path}" not in root:
            raise ValueError(
                f"data.root {root!r} is a pipe: command without a {{path}} placeholder; "
                "write it like 'pipe:aws s3 cp s3://bucket/dataset/{path} -'"
            )
        return root

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, name: str | None) -> str | None:
        return name if name is None else known_name(RECIPES, name, "data.recipe")

    @property
    def batch_size_eval(self) -> int:
        return self.eval_batch_size or self.batch_size_per_worker
