"""Trial cuts: does cutting a channel group out give exactly the masked network?

Channel-level DST zeroes a removed channel's slices and, later, the slim export (and the
shrinking run) cuts them out. The two agree only when the channel's operations are
per-channel and map 0 to 0 (structure.py). The dependency trace cannot see every operation
that breaks this: a softmax over the channels or a spatial attention gate (a zeroed channel
still takes part), a split into fixed sizes (mixnet, ghostnet), a channel shuffle whose group
count no longer divides the cut width (shufflenet). So every group is tried once: cut a copy,
zero the same channels in another copy, compare their outputs on a random batch. A group
whose cut fails or changes the output is kept whole.

    problem = cut_problem(model, structure, {"layer1.0.conv1": [1, 3]}, example)  # None: fine
    structure, excluded = verify_structure(model, structure, example)

Both copies run in eval mode on a generator of their own: the model, its modes and the
global RNG streams are left as they were.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from ft_dist.sparse.allocation import strip_wrapper_prefixes
from ft_dist.sparse.slim import slim_model
from ft_dist.sparse.structure import ChannelGroup, Structure
from ft_dist.utils import error_summary

# Largest output difference, relative to the output's scale, that float rounding explains
# (cutting reorders sums); a zeroed channel taking part in a softmax moves it by far more.
TOLERANCE = 2e-5


def trial_channels(group: ChannelGroup) -> list[list[int]]:
    """The cuts tried on a group: one channel (a width that no longer divides, a layer cut
    twice by two paths of the trace), and every other channel (each part of a split or
    concatenation loses some); the group always keeps at least one."""
    if group.size < 2:
        return []
    odd = list(range(1, group.size, 2))
    return [[1], odd] if odd != [1] else [[1]]


def zero_channels_(
    model: nn.Module, structure: Structure, removed: Mapping[str, list[int]]
) -> None:
    """Zero every slice of the ``removed`` channels in place (what channel-level DST does)."""
    params = {strip_wrapper_prefixes(n): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for group in structure.groups:
            channels = removed.get(group.name)
            if not channels:
                continue
            gone = torch.zeros(group.size, dtype=torch.bool)
            gone[channels] = True
            for piece in group.slices:
                positions = piece.index[gone[piece.channel]]
                params[piece.name].index_fill_(
                    piece.dim, positions.to(params[piece.name].device), 0.0
                )


def cut_problem(
    model: nn.Module,
    structure: Structure,
    removed: Mapping[str, list[int]],
    example: torch.Tensor,
) -> str | None:
    """None when cutting ``removed`` out of a copy of ``model`` gives the outputs of a copy
    with those channels zeroed; else one line saying what went wrong."""
    batch = torch.randn(
        2, *example.shape[1:], generator=torch.Generator().manual_seed(0), dtype=example.dtype
    ).to(example.device)
    masked, slim = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    zero_channels_(masked, structure, removed)
    # Masks of every parameter: the cut must leave each exactly the shape its mask is cut to.
    shapes = {
        strip_wrapper_prefixes(n): torch.ones_like(p, dtype=torch.bool)
        for n, p in model.named_parameters()
    }
    try:
        slim_model(slim, shapes, example, dict(removed))
        with torch.no_grad():
            want, got = masked(batch), slim(batch)
    except Exception as error:  # whatever the cut breaks: the group is not cut
        return f"cutting it fails ({error_summary(error)})"
    if not (torch.is_tensor(got) and torch.is_tensor(want)) or got.shape != want.shape:
        return "cutting it changes the output's shape"
    scale = max(1.0, float(want.abs().max()))
    difference = float((got.float() - want.float()).abs().max())
    if not difference <= TOLERANCE * scale:
        return f"cutting it changes the output by {difference:.2g} (zeroed channels still act)"
    return None


def verify_structure(
    model: nn.Module, structure: Structure, example: torch.Tensor
) -> tuple[Structure, tuple[tuple[str, str], ...]]:
    """``structure`` without the groups whose trial cuts fail (they join ``fixed`` with the
    reason), and those (group, reason) pairs. Each kind of trial cuts every group at once;
    only when one fails is each group tried alone, and the survivors again together."""
    trials = {g.name: cuts for g in structure.groups if (cuts := trial_channels(g))}

    def problem_of(names) -> str | None:
        kinds = max((len(trials[n]) for n in names), default=0)
        for kind in range(kinds):
            cut = {n: trials[n][min(kind, len(trials[n]) - 1)] for n in names}
            problem = cut_problem(model, structure, cut, example)
            if problem is not None:
                return problem
        return None

    if problem_of(list(trials)) is None:
        return structure, ()
    excluded = [(n, p) for n in trials if (p := problem_of([n])) is not None]
    survivors = [n for n in trials if n not in dict(excluded)]
    together = problem_of(survivors)
    if together is not None:  # groups fine alone but not together: keep them all whole
        excluded += [(name, f"cut with the others, {together}") for name in survivors]
    gone = dict(excluded)
    kept = tuple(g for g in structure.groups if g.name not in gone)
    return Structure(kept, structure.fixed + tuple(excluded)), tuple(excluded)
