"""The exact evaluation stream and the gather that turns per-rank outputs into metrics.

Each rank iterates ``(images, labels, indices)`` with ``indices`` the samples' positions
in the split (manifest order). Across all ranks and loader workers every sample appears
exactly once (``plan.eval_parts``): no padding, no duplicates, no drops, so ranks may run
different numbers of batches -- evaluate with the unwrapped model (``ddp.module``), not the
DDP wrapper, and meet again only in ``gather_by_index``::

    stream = EvalStream(cfg.data, split="val", rank=rank, world_size=world_size)
    outs, idx = [], []
    for images, labels, indices in stream:
        outs.append(model(images.to(device)).float().cpu()); idx.append(indices)
    full = gather_by_index({"logits": torch.cat(outs), ...}, torch.cat(idx), stream.num_samples)
    # full["logits"][i] is sample i of the split, on every rank: compute exact metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from ft_dist.data.config import DataConfig
from ft_dist.data.decoding import (
    BatchDecoder,
    DataInfo,
    RawItem,
    check_same_classes,
    describe,
)
from ft_dist.data.manifest import read_manifest
from ft_dist.data.pipeline import batch_loader
from ft_dist.data.plan import eval_parts
from ft_dist.data.reader import iter_shard
from ft_dist.utils import is_distributed


class EvalStream:
    """A rank's share of one split for evaluation, with the eval transform (no augmentation).

    ``root`` overrides ``cfg.root`` to read another dataset (an OoD set) through the
    training run's recipe, image size and normalisation. ``normalize=False`` yields raw
    [0, 1] pixels (ensemble evaluation corrupts those, then normalises with ``mean`` /
    ``std``); ``labels=False`` yields labels -1 and accepts a split with any class list
    (any shard set can serve as an OoD set).
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        split: str,
        rank: int = 0,
        world_size: int = 1,
        root: str | None = None,
        info: DataInfo | None = None,
        normalize: bool = True,
        labels: bool = True,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.info = info or describe(cfg)
        self.manifest = read_manifest(root or cfg.root, split)
        if labels:
            check_same_classes(self.manifest, self.info)
        self.decoder = BatchDecoder.create(
            cfg, self.info, self.manifest, train=False, normalize=normalize, labeled=labels
        )
        self.num_roles = max(1, cfg.loader_workers)
        sizes = [shard.num_samples for shard in self.manifest.shards]
        self.parts = eval_parts(sizes, world_size * self.num_roles)

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel normalisation mean of the run's recipe (applied unless normalize=False)."""
        return self.info.resolved_recipe.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.info.resolved_recipe.std

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one yielded image."""
        recipe = self.info.resolved_recipe
        return recipe.channels, recipe.size, recipe.size

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        yield from batch_loader(_EvalSource(self), self.cfg)


class _EvalSource(IterableDataset):
    """IterableDataset: the parts of one slot, decoded in batches of ``batch_size_eval``."""

    def __init__(self, stream: EvalStream) -> None:
        first_slot = stream.rank * stream.num_roles
        self.parts = stream.parts[first_slot : first_slot + stream.num_roles]
        self.manifest, self.decoder = stream.manifest, stream.decoder
        self.batch_size = stream.cfg.batch_size_eval

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        worker = get_worker_info()
        items: list[RawItem] = []
        indices: list[int] = []
        for item, index in self._samples(self.parts[worker.id if worker else 0]):
            items.append(item)
            indices.append(index)
            if len(items) == self.batch_size:
                yield (*self.decoder.decode(items), torch.tensor(indices))
                items, indices = [], []
        if items:
            yield (*self.decoder.decode(items), torch.tensor(indices))

    def _samples(self, parts: list[tuple[int, int, int]]) -> Iterator[tuple[RawItem, int]]:
        offsets = self.manifest.shard_offsets()
        for shard, member, group in parts:
            url = self.manifest.shard_url(shard)
            info, remote = self.manifest.shards[shard], not self.manifest.is_local
            for position, key, sample in iter_shard(url, info, verify_digest=remote):
                if position % group == member:
                    yield (url, key, sample), offsets[shard] + position


def gather_by_index(values: dict[str, Any], indices: Any, num_samples: int) -> dict[str, Any]:
    """All ranks' per-sample tensors, ordered by sample index, on every rank.

    ``values`` holds tensors whose first dimension matches ``indices``. Uses
    ``torch.distributed.all_gather_object`` when a process group is initialised (with
    NCCL, call ``torch.cuda.set_device`` first); works in a single process too. Raises if
    any sample of ``0..num_samples-1`` is missing or duplicated, so metrics computed from
    the result are exact.
    """
    local = (indices.detach().cpu(), {k: v.detach().cpu() for k, v in values.items()})
    if is_distributed():
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, local)
    else:
        shards = [local]
    all_indices = torch.cat([idx.reshape(-1).long() for idx, _ in shards])
    counts = torch.bincount(all_indices, minlength=num_samples)
    if len(counts) != num_samples or bool((counts != 1).any()):
        missing = int((counts[:num_samples] == 0).sum())
        repeated = int((counts > 1).sum())
        raise RuntimeError(
            f"evaluation covered {len(all_indices)} samples of {num_samples}: {missing} "
            f"missing, {repeated} repeated, {len(counts) - num_samples} out of range"
        )
    order = torch.argsort(all_indices)
    return {key: torch.cat([vals[key] for _, vals in shards])[order] for key in values}
