"""WebDataset shards: writing them, streaming them to training, evaluating them exactly.

Importing ``ft_dist.data`` stays light (no torch), so configs and ``ft-dist shards`` load
fast; the streams live in submodules that import torch:

* ``ft_dist.data.DataConfig`` -- the ``data:`` config section.
* ``ft_dist.data.read_manifest(root, split) -> Manifest``;
  ``ft_dist.data.describe(cfg) -> DataInfo`` (num_classes, in_channels, image_size).
* ``ft_dist.data.pipeline``: ``check_dataset(cfg, world_size) -> DataInfo`` (every
  pre-training check at once); ``TrainStream(cfg, rank=, world_size=, seed=)`` with
  ``.steps_per_epoch`` and ``.epoch(epoch, start_step) -> EpochLoader``.
* ``ft_dist.data.evaluation``: ``EvalStream(cfg, split=, rank=, world_size=)`` yielding
  ``(images, labels, indices)`` (``normalize=False``: raw [0, 1] pixels; ``labels=False``:
  any split as unlabelled); ``gather_by_index(values, indices, num_samples)``.
* ``ft_dist.data.recipes``: ``choose_recipe(cfg)`` / ``recipe_lines(cfg)`` -- the named,
  hinted or manifest-derived recipe and the line ``ft-dist train`` prints about it.
* ``ft_dist.data.corrupted.open_corruptions`` -- CIFAR-10/100-C and ImageNet-C from disk.
* ``write_imagefolder`` / ``bundled.write_mnist`` / ``cifar.write_cifar`` /
  ``svhn.write_svhn`` -- what ``ft-dist shards`` runs.
"""

from ft_dist.data.config import DataConfig
from ft_dist.data.decoding import DataInfo, describe
from ft_dist.data.integrity import verify_shards
from ft_dist.data.manifest import Manifest, ShardInfo, read_manifest
from ft_dist.data.reader import DataError

__all__ = [
    "DataConfig",
    "DataError",
    "DataInfo",
    "Manifest",
    "ShardInfo",
    "describe",
    "read_manifest",
    "verify_shards",
]
