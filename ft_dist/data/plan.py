"""Pure planning functions: who reads which shard, how many batches, which seeds.

Everything here is computed from the manifest alone, identically on every rank, with no
communication -- the same idea as RigL's stateless seeds. That is what makes the step
count identical on all ranks (DDP never waits on a rank that ran out of data), epochs
reproducible, and a mid-epoch position restorable from just ``(epoch, step)``.

Terms: a *slot* is one (rank, loader worker) pair, ``slot = rank * num_roles + role``.
A loader worker plays a *role*: role ``r`` produces the rank's batches ``r, r + W,
r + 2W, ...`` (W = number of roles), which is the order in which torch's DataLoader
collects batches from its workers.
"""

from __future__ import annotations

import random

from ft_dist.utils import derive_seed


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings, stable across processes and runs."""
    return derive_seed(repr(parts))


def steps_per_epoch(num_samples: int, world_size: int, batch_size: int) -> int:
    """Full global batches per epoch; the last partial global batch is dropped."""
    return num_samples // (world_size * batch_size)


def balanced_assignment(sizes: list[int], order: list[int], num_slots: int) -> list[list[int]]:
    """Give each shard (taken in ``order``) to the slot holding the fewest samples so far.

    With equal shard sizes this is round-robin; with uneven sizes it keeps the slots'
    sample counts within one shard of each other, so few samples are dropped or repeated.
    """
    loads = [0] * num_slots
    slots: list[list[int]] = [[] for _ in range(num_slots)]
    for shard in order:
        target = min(range(num_slots), key=lambda slot: (loads[slot], slot))
        slots[target].append(shard)
        loads[target] += sizes[shard]
    return slots


def epoch_assignment(sizes: list[int], num_slots: int, seed: int, epoch: int) -> list[list[int]]:
    """Shards per slot for one training epoch: a fresh seeded permutation each epoch."""
    order = list(range(len(sizes)))
    random.Random(mix_seed("shards", seed, epoch)).shuffle(order)
    return balanced_assignment(sizes, order, num_slots)


def role_batches(role: int, num_roles: int, start_step: int, num_steps: int) -> range:
    """Global batch indices (within the rank's epoch) that a role still has to produce."""
    first = start_step + (role - start_step) % num_roles
    return range(first, num_steps, num_roles)


def role_of_worker(worker: int, num_roles: int, start_step: int) -> int:
    """The role loader worker ``worker`` plays when an epoch (re)starts at ``start_step``.

    The DataLoader asks worker 0 for the first batch, so on resume worker 0 must produce
    batch ``start_step``: worker ``w`` takes role ``(w + start_step) % W``.
    """
    return (worker + start_step) % num_roles


def skipped_batches(role: int, num_roles: int, start_step: int) -> int:
    """How many of a role's batches lie before ``start_step`` (read and dropped undecoded)."""
    return len(range(role, start_step, num_roles))


def eval_parts(sizes: list[int], num_slots: int) -> list[list[tuple[int, int, int]]]:
    """Per slot, the parts ``(shard, member, group)`` it evaluates, each sample exactly once.

    A part keeps the shard positions ``p`` with ``p % group == member``. With at least as
    many shards as slots, whole shards are balanced over slots (group 1); with fewer,
    shard ``j`` is shared by the slots ``s`` with ``s % num_shards == j``.
    """
    num_shards = len(sizes)
    if num_shards >= num_slots:
        slots = balanced_assignment(sizes, list(range(num_shards)), num_slots)
        return [[(shard, 0, 1) for shard in shards] for shards in slots]
    groups = [len(range(j, num_slots, num_shards)) for j in range(num_shards)]
    return [[(s % num_shards, s // num_shards, groups[s % num_shards])] for s in range(num_slots)]


# --------------------------------------------------------------------------- elastic order
# With a fixed global batch G (elastic training) an epoch is the shards in a seeded
# per-epoch order, concatenated, cut into lanes that no rank count enters: lane (c, q) of
# micro-batch column c (G / b of them, b samples each) and step residue q (mod the loader
# workers R) holds b samples for each step k = q, q + R, ... (pipeline._ElasticSource).
# Optimizer step k takes the same samples whatever the world size, so a resume at step k on
# another world size reads exactly the samples not yet consumed: each once, none twice.


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The epoch's shard order (the same permutation `epoch_assignment` balances)."""
    order = list(range(num_shards))
    random.Random(mix_seed("shards", seed, epoch)).shuffle(order)
    return order


def window_permutation(start: int, length: int, seed: int, epoch: int) -> list[int]:
    """Source offsets of the window of ``length`` positions starting at ``start``."""
    offsets = list(range(length))
    random.Random(mix_seed("window", seed, epoch, start)).shuffle(offsets)
    return offsets


def elastic_lane(
    column: int, residue: int, num_steps: int, num_roles: int, batch_size: int
) -> tuple[int, int]:
    """(first sample in the epoch's shard sequence, length) of lane (column, residue): the
    lanes of a column lie together in residue order, columns one after the other, so the
    columns of a rank (an aligned range at any world size) are one contiguous stretch."""
    per_column = num_steps * batch_size
    before = sum(len(range(q, num_steps, num_roles)) for q in range(residue))
    length = len(range(residue, num_steps, num_roles)) * batch_size
    return column * per_column + before * batch_size, length
