"""The training stream: equal steps on every rank, seeded epochs, resumable positions.

Usage in a per-worker loop::

    stream = TrainStream(cfg.data, rank=rank, world_size=world_size, seed=run_seed)
    for epoch in range(start_epoch, num_epochs):
        loader = stream.epoch(epoch, start_step=resume_step if epoch == start_epoch else 0)
        for step, (images, labels) in enumerate(loader, start=loader.start_step):
            ...                           # checkpoint {"epoch": epoch, "step": step + 1}

How one epoch is read (all from the manifest, identical on every rank -- see plan.py):

1. ``steps_per_epoch = num_samples // (world_size × batch_size_per_worker)``.
2. The shards are permuted with (seed, epoch) and balanced over the ``world_size × W``
   slots (rank, loader-worker role); fewer shards than slots is an error.
3. A role streams its shards, cycling through them again (reshuffled) if they hold fewer
   samples than its quota, through a seeded shuffle buffer, and stops at exactly its
   quota -- so uneven shards never leave one rank short of batches (no DDP hang).
4. On resume at ``start_step`` each role reads and drops, undecoded, the samples of the
   batches before it; each batch's augmentation is seeded by (seed, epoch, rank, batch),
   so the resumed epoch yields exactly the batches of the uninterrupted one.

Within an epoch some samples may be read twice and a few not at all (the quota rounds to
whole batches); over epochs the shard permutation changes, so all are seen. The order is a
function of (seed, epoch, rank, world_size, loader_workers, batch_size_per_worker): resume
with the same values to reproduce the uninterrupted run exactly.

With a fixed global batch (``TrainStream(..., global_batch=G)``: elastic training) the
samples of optimizer step k are a world-size independent set (plan.py, "elastic order"),
so a resume on another number of ranks reads each sample of the epoch once, none twice,
and augments it alike (the augmentation is seeded by the micro-batch column and the step).
The epoch is laid out in lanes (`_ElasticSource`) so that each rank reads only its share
of the epoch's bytes, and each loader worker its own lanes, plus at most one shard at the
start of each lane (one lane per loader worker when a rank does one micro-batch a step).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ft_dist.data.config import DataConfig
from ft_dist.data.decoding import BatchDecoder, DataInfo, RawItem, check_same_classes, describe
from ft_dist.data.integrity import verify_shards
from ft_dist.data.manifest import Manifest, read_manifest
from ft_dist.data.plan import (
    elastic_lane,
    epoch_assignment,
    mix_seed,
    role_batches,
    role_of_worker,
    shard_order,
    skipped_batches,
    steps_per_epoch,
    window_permutation,
)
from ft_dist.data.reader import DataError, iter_shard


def check_dataset(cfg: DataConfig, world_size: int) -> DataInfo:
    """Everything that can be checked before training starts, in one call (driver side).

    Reads the train/val/test manifests, checks local shards (existence, size, sha256 with
    ``data.verify=checksum``), label ranges, shards >= ranks × loader workers and at least
    one global batch. Raises ValueError / FileNotFoundError naming the problem and fix.
    """
    info = describe(cfg)
    for split in (cfg.train_split, cfg.val_split, cfg.test_split):
        if split is not None:
            manifest = read_manifest(cfg.root, split)
            check_same_classes(manifest, info)
            verify_shards(manifest, cfg.verify)
    _check_train_layout(cfg, read_manifest(cfg.root, cfg.train_split), world_size)
    return info


def _check_train_layout(cfg: DataConfig, manifest: Manifest, world_size: int) -> int:
    """Shard and sample counts a training epoch needs; returns steps per epoch."""
    num_roles = max(1, cfg.loader_workers)
    if manifest.num_shards < world_size * num_roles:
        raise ValueError(
            f"split {manifest.split!r} has {manifest.num_shards} shards, fewer than ranks × "
            f"loader workers = {world_size} × {num_roles}; lower data.loader_workers or "
            "rewrite the split with a smaller --shard-size"
        )
    steps = steps_per_epoch(manifest.num_samples, world_size, cfg.batch_size_per_worker)
    if steps == 0:
        raise ValueError(
            f"split {manifest.split!r} has {manifest.num_samples} samples, less than one "
            f"global batch ({world_size} ranks × data.batch_size_per_worker="
            f"{cfg.batch_size_per_worker}); lower data.batch_size_per_worker"
        )
    return steps


def _check_elastic_layout(
    cfg: DataConfig, manifest: Manifest, world_size: int, global_batch: int
) -> int:
    """Micro-batches per epoch of one rank under a fixed global batch."""
    per_micro_step = world_size * cfg.batch_size_per_worker
    if global_batch % per_micro_step:
        raise ValueError(
            f"global batch {global_batch} is not a multiple of {world_size} ranks × "
            f"data.batch_size_per_worker={cfg.batch_size_per_worker}"
        )
    steps = manifest.num_samples // global_batch
    if steps == 0:
        raise ValueError(
            f"split {manifest.split!r} has {manifest.num_samples} samples, less than one "
            f"global batch of {global_batch}; lower train.global_batch_size"
        )
    return steps * (global_batch // per_micro_step)


class TrainStream:
    """A rank's view of the training split: build once, then one loader per epoch."""

    def __init__(
        self,
        cfg: DataConfig,
        *,
        rank: int,
        world_size: int,
        seed: int | None = None,
        global_batch: int | None = None,
    ) -> None:
        """``global_batch``: examples per optimizer step, fixed across world sizes (elastic
        training): the epoch's order is then world-size independent (see plan.py), and
        ``steps_per_epoch`` counts this rank's micro-batches, ``global_batch / (world_size
        × batch_size_per_worker)`` per optimizer step."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.seed = cfg.seed if seed is None else seed
        self.info = describe(cfg)
        self.manifest = read_manifest(cfg.root, cfg.train_split)
        self.num_roles = max(1, cfg.loader_workers)
        self.elastic_batch = global_batch
        if global_batch is None:
            self.steps_per_epoch = _check_train_layout(cfg, self.manifest, world_size)
        else:
            self.steps_per_epoch = _check_elastic_layout(
                cfg, self.manifest, world_size, global_batch
            )
        self.decoder = BatchDecoder.create(cfg, self.info, self.manifest, train=True)

    @property
    def global_batch_size(self) -> int:
        return self.elastic_batch or self.world_size * self.cfg.batch_size_per_worker

    def epoch(self, epoch: int, start_step: int = 0) -> EpochLoader:
        """Exactly ``steps_per_epoch - start_step`` batches ``(images, labels)``."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(
                f"start_step {start_step} is outside 0..{self.steps_per_epoch} (steps per epoch)"
            )
        source: IterableDataset
        if self.elastic_batch is None:
            source = _EpochSource(self, epoch, start_step)
        else:
            source = _ElasticSource(self, epoch, start_step)
        return EpochLoader(source, self.cfg, epoch, start_step, self.steps_per_epoch)


class EpochLoader:
    """Iterable over one epoch's remaining batches; knows its position for checkpoints."""

    def __init__(
        self, source: _EpochSource, cfg: DataConfig, epoch: int, start_step: int, steps: int
    ) -> None:
        self.source, self.cfg = source, cfg
        self.epoch, self.start_step, self.steps_per_epoch = epoch, start_step, steps
        self.step = start_step  # batches handed out so far in this epoch

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def state_dict(self) -> dict[str, int]:
        """Position to store in a checkpoint: resume with ``stream.epoch(epoch, step)``."""
        return {"epoch": self.epoch, "step": self.step}

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        loader = batch_loader(self.source, self.cfg)
        self.step = self.start_step
        for batch in loader:
            self.step += 1
            yield batch
        if self.step != self.steps_per_epoch:
            raise RuntimeError(
                f"epoch {self.epoch} ended after {self.step} of {self.steps_per_epoch} steps; "
                "this is a bug in ft_dist.data"
            )


class _EpochSource(IterableDataset):
    """The torch IterableDataset behind one epoch's DataLoader (runs in loader workers)."""

    def __init__(self, stream: TrainStream, epoch: int, start_step: int) -> None:
        sizes = [shard.num_samples for shard in stream.manifest.shards]
        self.slots = epoch_assignment(
            sizes, stream.world_size * stream.num_roles, stream.seed, epoch
        )
        self.manifest, self.decoder = stream.manifest, stream.decoder
        self.rank, self.num_roles = stream.rank, stream.num_roles
        self.seed, self.epoch, self.start_step = stream.seed, epoch, start_step
        self.steps = stream.steps_per_epoch
        self.batch_size = stream.cfg.batch_size_per_worker
        self.shuffle_buffer = stream.cfg.shuffle_buffer
        self.verify_digest = not stream.manifest.is_local

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        worker = get_worker_info()
        role = role_of_worker(worker.id if worker else 0, self.num_roles, self.start_step)
        batches = role_batches(role, self.num_roles, self.start_step, self.steps)
        skip = skipped_batches(role, self.num_roles, self.start_step) * self.batch_size
        quota = skip + len(batches) * self.batch_size
        samples = itertools.islice(self._shuffled(role, quota), skip, quota)
        for index in batches:
            items = list(itertools.islice(samples, self.batch_size))
            seed = mix_seed("augment", self.seed, self.epoch, self.rank, index)
            yield self.decoder.decode(items, seed)

    def _shuffled(self, role: int, quota: int) -> Iterator[RawItem]:
        samples = self._cycled(role)
        size = min(self.shuffle_buffer, quota)  # a bigger buffer would only read ahead
        if size <= 1:
            return samples
        import webdataset as wds

        rng = random.Random(mix_seed("buffer", self.seed, self.epoch, self.rank, role))
        return iter(wds.shuffle(size, initial=size, rng=rng)(samples))

    def _cycled(self, role: int) -> Iterator[RawItem]:
        """The role's shards, then again reshuffled, ..., as one endless sample stream."""
        shards = self.slots[self.rank * self.num_roles + role]
        for cycle in itertools.count():
            order = list(shards)
            if cycle:
                rng = random.Random(
                    mix_seed("cycle", self.seed, self.epoch, self.rank, role, cycle)
                )
                rng.shuffle(order)
            count = 0
            for shard in order:
                url = self.manifest.shard_url(shard)
                info = self.manifest.shards[shard]
                for _, key, sample in iter_shard(url, info, verify_digest=self.verify_digest):
                    count += 1
                    yield url, key, sample
            if count == 0:
                raise DataError(f"shards {order} of {self.manifest.split!r} yielded no samples")


class _ElasticSource(IterableDataset):
    """One epoch in the world-size independent order of a fixed global batch, read in lanes.

    Layout (a function of seed, epoch, G, the per-worker batch b and the loader workers R,
    never of the world size). The epoch's shard sequence is cut into C·R lanes, C = G / b
    micro-batch columns times the R residues of the step: lane (c, q) holds b samples for
    every optimizer step k ≡ q (mod R) of column c, as one contiguous stretch of samples,
    lanes in (c, q) order. Step k takes entry k // R of lane (c, k mod R) for every column
    c: a fixed set whatever the world size, so a resume on another number of ranks reads
    each sample once. Rank r of N owns columns [r·a, (r+1)·a) (a = G / (N·b) micro-batches
    a step, its accumulation): one contiguous stretch, exactly 1/N of the epoch. Its micro-
    step m = k·a + μ, made by loader role m mod R, reads lane (r·a + μ, k mod R), and every
    micro-step of a lane falls to the same role, so roles read disjoint sets of whole lanes
    (a = 1: one lane each). Inside a lane, blocks of the shuffle buffer (rounded to whole
    micro-batches) are permuted; a lane is read forward from its resume block, shards
    wholly before it unopened, so a reader reads its lanes plus at most the part of one
    shard before each lane's start. Changing data.loader_workers changes the lanes: a
    resume keeps it (the loop's run meta checks).
    """

    def __init__(self, stream: TrainStream, epoch: int, start_step: int) -> None:
        sizes = [shard.num_samples for shard in stream.manifest.shards]
        self.order = shard_order(len(sizes), stream.seed, epoch)
        self.sizes = [sizes[shard] for shard in self.order]
        self.manifest, self.decoder = stream.manifest, stream.decoder
        self.rank, self.world_size = stream.rank, stream.world_size
        self.num_roles, self.steps = stream.num_roles, stream.steps_per_epoch
        self.seed, self.epoch, self.start_step = stream.seed, epoch, start_step
        self.batch_size = stream.cfg.batch_size_per_worker
        self.global_batch = stream.global_batch_size
        self.accum = self.global_batch // (self.world_size * self.batch_size)
        self.block = self.batch_size * max(1, stream.cfg.shuffle_buffer // self.batch_size)
        self.verify_digest = not stream.manifest.is_local
        self.bytes_read = [0]  # every byte the readers of this process took from shards

    def lane(self, column: int, residue: int) -> tuple[int, int]:
        """(first sample in the epoch's shard sequence, length) of lane (column, residue)."""
        num_steps = self.steps // self.accum
        return elastic_lane(column, residue, num_steps, self.num_roles, self.batch_size)

    def raw_batches(self, role: int) -> Iterator[tuple[int, list[RawItem]]]:
        """``(micro-step, undecoded samples)`` of one loader role, in the loader's order."""
        lanes: dict[tuple[int, int], _Lane] = {}
        for index in role_batches(role, self.num_roles, self.start_step, self.steps):
            step, micro = divmod(index, self.accum)
            key = (self.rank * self.accum + micro, step % self.num_roles)
            if key not in lanes:
                lanes[key] = _Lane(self, *self.lane(*key))
            yield index, lanes[key].entry(step // self.num_roles)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        worker = get_worker_info()
        role = role_of_worker(worker.id if worker else 0, self.num_roles, self.start_step)
        for index, items in self.raw_batches(role):
            # Seeded by (column, step), not (rank, micro-step): a resize keeps the crops.
            step, micro = divmod(index, self.accum)
            column = self.rank * self.accum + micro
            seed = mix_seed("augment", self.seed, self.epoch, column, step)
            yield self.decoder.decode(items, seed)


class _Lane:
    """One lane's micro-batches, read forward block by block (permuted within a block)."""

    def __init__(self, source: _ElasticSource, start: int, length: int) -> None:
        self.source, self.start, self.length = source, start, length
        self.reader = _SequenceReader(source)
        self.first, self.items, self.offsets = -1, [], []

    def entry(self, index: int) -> list[RawItem]:
        """The micro-batch of the lane's ``index``-th step."""
        size, block = self.source.batch_size, self.source.block
        lo = index * size
        if not self.first <= lo < self.first + len(self.offsets):
            self.first = lo - lo % block
            length = min(block, self.length - self.first)
            begin = self.start + self.first
            self.items = self.reader.read(begin, begin + length)
            self.offsets = window_permutation(begin, length, self.source.seed, self.source.epoch)
        return [self.items[self.offsets[t - self.first]] for t in range(lo, lo + size)]


class _SequenceReader:
    """Samples ``[lo, hi)`` of the epoch's shard sequence, read forward only; shards that
    end before ``lo`` are skipped unopened, samples before it dropped undecoded."""

    def __init__(self, source: _ElasticSource) -> None:
        self.source = source
        self.position, self.samples = 0, self._open_at(0)  # a generator: opens nothing yet

    def read(self, lo: int, hi: int) -> list[RawItem]:
        if lo < self.position:
            raise RuntimeError(f"the elastic order read back to {lo} from {self.position}")
        if lo > self.position:
            self.samples, self.position = self._open_at(lo), lo
        items = list(itertools.islice(self.samples, hi - lo))
        if len(items) != hi - lo:
            raise DataError(f"the shards of epoch order {self.source.order} end before {hi}")
        self.position = hi
        return items

    def _open_at(self, lo: int) -> Iterator[RawItem]:
        source, first = self.source, 0
        for shard, size in zip(source.order, source.sizes, strict=True):
            if first + size > lo:
                url = source.manifest.shard_url(shard)
                info = source.manifest.shards[shard]
                samples = iter_shard(
                    url, info, verify_digest=source.verify_digest, counter=source.bytes_read
                )
                for _, key, sample in itertools.islice(samples, max(0, lo - first), None):
                    yield url, key, sample
            first += size


def batch_loader(source: IterableDataset, cfg: DataConfig) -> DataLoader:
    """The DataLoader both streams run their already-batched ``source`` through."""
    workers = cfg.loader_workers
    return DataLoader(
        source,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=cfg.prefetch_factor if workers else None,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        # Own generator: the loader would otherwise draw its base seed from (and so
        # advance) the training process's global torch RNG. Batches seed themselves.
        generator=torch.Generator().manual_seed(0),
        multiprocessing_context=cfg.loader_start_method if workers else None,
        persistent_workers=False,
    )
