"""Channel-level DST: remove whole channels gradually during training (Chase).

Chase (Yin et al., "Dynamic Sparsity Is Channel-Level Sparsity Learner", NeurIPS 2023)
observes that unstructured DST leaves some channels far sparser than others, finds them
by their *unmasked mean magnitude* (UMM: the mean |w| over every position of the channel's
output filter, inactive zeros included, so a channel scores low when it is sparse, small,
or both), removes them gradually during training, and reallocates the parameter budget to
the channels that stay. The result is a channel-slim network that dense kernels run faster.

How ft_dist does it (``sparsity.channel_sparsity`` > 0), inside `DynamicSparsity`:

* **Which channels**: the removable groups of the model's dependency structure
  (`ft_dist.sparse.structure`: residual sums, concatenations, norms, attention heads), traced
  once at the first forward pass. A group's channel scores the UMM of its producer slices
  (the output filters of every conv/linear that writes the channel).
* **When and how many**: at regular DST updates after ``channel_start_step``, the removed
  fraction follows the cubic schedule of gradual pruning (Zhu & Gupta 2017, as Chase):
  ``s(t) = s_f · (1 − (1 − p)³)``, ``p = (t − start) / (end − start)`` clipped to [0, 1],
  so it reaches ``channel_sparsity`` at the first update at or after ``channel_end_step``.
  The lowest-UMM channels go, globally across groups (ties by group order, then index), but
  each group keeps at least ``max(1, ceil(channel_min_fraction · (1 − s_f) · size))``.
  With ``channel_allocation: uniform`` every group loses ``round(s(t) · size)`` of its own
  channels instead (lowest UMM first inside the group): the FLOPs of every layer shrink
  alike, where the global order would first take cheap channels (a classifier's hidden
  units) that save parameters but little time. ``channel_group_sparsity`` gives named
  groups (names or globs) their own final fraction under the uniform allocation.
* **What removal means**: every slice of a removed channel (conv/linear rows and columns,
  BatchNorm weight and bias, biases) is zero, inactive in the masks (ERK-dense layers'
  masks included), has zero optimizer state and zero gradient forever after; growth never
  picks it again (EDST explorations included: they prune and grow inside the channels that
  remain, and remove none). The masked network then equals the slim network exactly, which
  is what `ft-dist export` cuts out.
* **Budget**: the sparse layers' total of active weights is kept. At each removal the
  per-layer densities are re-solved (the run's ``sparse_init``, ERK by default) on the slim
  shapes, as Chase re-solves ERK; each layer then drops or grows at that update to its new
  exact count. Layers dense under ERK stay dense over the channels that remain.
* **Ranks**: the scores are float64 sums of weights that are identical on every rank and
  the selection is a sort with a fixed tie order, so every rank removes the same channels
  with no communication; the alive-channel vectors join the masks' cross-rank checksum.
* **Checkpoint**: alive channels, exact per-layer counts and the FLOPs history are in the
  engine's state_dict, so a resume continues bit-identically.
* **FLOPs**: a removed channel has no active weight, so the RigL accounting (d_l · F_l)
  prices it at nothing; the slim network's dense FLOPs (what dense kernels execute) and the
  step-averaged sparse FLOPs of training are reported in ``stats()``, and ``segments()``
  gives both per stretch between removals, from which the loop prices the run's training
  FLOPs (`ft_dist.train.setup.flops_per_example_so_far`).
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from ft_dist.private_api import compiled_inner_module
from ft_dist.sparse.allocation import active_counts, layer_densities, strip_wrapper_prefixes
from ft_dist.sparse.structure import (
    ChannelGroup,
    ChannelTraceError,
    Structure,
    channel_structure,
)
from ft_dist.sparse.update import LayerUpdate, highest, lowest, prune_and_grow
from ft_dist.sparse.verify import verify_structure
from ft_dist.utils import Note

if TYPE_CHECKING:
    from ft_dist.sparse.dynamic import DynamicSparsity


def removed_fraction(step: int, final: float, start: int, end: int) -> float:
    """Cubic gradual-pruning schedule: 0 up to ``start``, ``final`` from ``end`` on."""
    progress = min(1.0, max(0.0, (step - start) / max(end - start, 1)))
    return final * (1.0 - (1.0 - progress) ** 3)


def umm_scores(
    group: ChannelGroup,
    params: Mapping[str, torch.Tensor],
    layout: Mapping[str, tuple[tuple[int, ...], Mapping[int, torch.Tensor]]] | None = None,
) -> torch.Tensor:
    """Unmasked mean magnitude of each channel of ``group`` (float64, CPU): the mean |w| over
    every position of its producer slices, inactive zeros included. ``layout``: per
    parameter whose channels were cut out, (its full shape, per cut dimension the full
    positions it kept); the scores are those of the full, masked parameter."""
    sums = torch.zeros(group.size, dtype=torch.float64)
    counts = torch.zeros(group.size, dtype=torch.float64)
    for piece in group.slices:
        if not piece.producer:
            continue
        weight = params[piece.name].detach()
        per_row = weight.abs().transpose(0, piece.dim).reshape(weight.shape[piece.dim], -1)
        totals = per_row.double().sum(dim=1).cpu()
        full_shape, kept = (layout or {}).get(piece.name, (tuple(weight.shape), {}))
        if piece.dim in kept:  # rows cut out were all zero: they add nothing
            totals = torch.zeros(full_shape[piece.dim], dtype=torch.float64).index_copy_(
                0, kept[piece.dim], totals
            )
        sums.index_add_(0, piece.channel, totals[piece.index])
        width = math.prod(full_shape) // full_shape[piece.dim]
        counts.index_add_(
            0, piece.channel, torch.full((len(piece.index),), float(width), dtype=torch.float64)
        )
    return sums / counts.clamp(min=1.0)


def select_channels(
    scores: dict[str, torch.Tensor],
    alive: dict[str, torch.Tensor],
    minimum: dict[str, int],
    count: int,
) -> dict[str, list[int]]:
    """The ``count`` alive channels of lowest score over all groups, each group keeping at
    least ``minimum``; ties by group order, then channel index (deterministic)."""
    candidates = []
    for order, (name, score) in enumerate(scores.items()):
        for channel in alive[name].nonzero().flatten().tolist():
            candidates.append((float(score[channel]), order, channel, name))
    candidates.sort()
    left = {name: int(vector.sum()) for name, vector in alive.items()}
    chosen: dict[str, list[int]] = {name: [] for name in scores}
    taken = 0
    for _, _, channel, name in candidates:
        if taken == count:
            break
        if left[name] > minimum[name]:
            chosen[name].append(channel)
            left[name] -= 1
            taken += 1
    return chosen


def _names(key: str, group: ChannelGroup) -> bool:
    """Whether a channel_group_sparsity key (a group name or a glob) names ``group``."""
    return group.name == key or fnmatch.fnmatchcase(group.name, key)


def bare_module(model: nn.Module) -> nn.Module:
    """The model inside DDP / DeepSpeed (``.module``) and torch.compile wrappers: its
    forward is traced without the wrapper's collectives."""
    while True:
        inner = getattr(model, "module", None)
        inner = inner if isinstance(inner, nn.Module) else compiled_inner_module(model)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class ChannelSparsity:
    """The channel-level part of one `DynamicSparsity` (module docstring)."""

    def __init__(self, engine: DynamicSparsity, model: nn.Module) -> None:
        config = engine.config
        if config.channel_end_step is None:
            raise ValueError(
                "sparsity.channel_sparsity needs sparsity.channel_end_step (the step by which "
                "the channels are removed; `ft-dist train` fills in its method's default)"
            )
        self.engine = engine
        self.model = model = bare_module(model)
        self.final = config.channel_sparsity
        self.start, self.end = config.channel_start_step, config.channel_end_step
        self.min_fraction = config.channel_min_fraction
        self.uniform = config.channel_allocation == "uniform"
        self.group_final = dict(config.channel_group_sparsity)
        self.named = {strip_wrapper_prefixes(n): p for n, p in model.named_parameters()}
        # Shrinking (sparsity.channel_shrink): removed channels are cut out of the model.
        # Groups, channels and FLOPs stay numbered as in the full model; per parameter and
        # cut dimension, ``kept_index`` lists the full positions the model still has, and
        # ``cut_alive`` is each group's alive vector when it was last cut.
        self.shrink = config.channel_shrink
        self.full_shapes = {n: tuple(p.shape) for n, p in self.named.items()}
        self.kept_index: dict[str, dict[int, torch.Tensor]] = {}
        self.cut_alive: dict[str, torch.Tensor] = {}
        self.example: torch.Tensor | None = None
        self.budget = sum(engine.num_active[n] for n in engine.sparse_names)
        self.structure: Structure | None = None
        self.alive: dict[str, torch.Tensor] = {}
        self.keep: dict[str, torch.Tensor] = {}  # bool, param shape; False = removed position
        # (first step, sparse forward FLOPs, slim dense forward FLOPs) from each removal on
        self.flops_history: list[tuple[int, float, float]] = []
        self.dense_flops = 0.0
        self.layer_flops: dict[str, int] = {}
        self._hook = model.register_forward_pre_hook(self._build_on_first_forward)

    # ------------------------------------------------------------------ structure
    def trace(self, input_shape: tuple[int, ...]) -> None:
        """Trace now, from the shape of one input (no batch dimension), not at the first
        forward: a resume can then restore a model whose channels were cut out."""
        self._hook.remove()
        param = next(self.model.parameters())
        self.build(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))

    def _build_on_first_forward(self, module: nn.Module, inputs) -> None:
        """Trace the dependency structure and the per-layer FLOPs once, at the first forward
        pass (when the input shape is known), then drop this hook."""
        self._hook.remove()
        images = next(x for x in inputs if isinstance(x, torch.Tensor))
        example = torch.zeros(1, *images.shape[1:], device=images.device, dtype=images.dtype)
        with torch.inference_mode(False):
            self.build(example)

    def build(self, example: torch.Tensor) -> None:
        from ft_dist.sparse.flops import flops_report

        structure = verified_structure(self.model, example, self.group_final)
        self.example = example
        loaded = self.alive
        self.alive = {g.name: torch.ones(g.size, dtype=torch.bool) for g in structure.groups}
        if loaded:
            sizes = {name: len(v) for name, v in loaded.items()}
            if sizes != {g.name: g.size for g in structure.groups}:
                raise ValueError(
                    "channel state does not match this model's channel groups (saved from "
                    "another model?); resume with the same model"
                )
            self.alive = {name: v.clone() for name, v in loaded.items()}
        unmatched = [k for k in self.group_final if not any(_names(k, g) for g in structure.groups)]
        if unmatched:
            raise ValueError(
                f"sparsity.channel_group_sparsity: {unmatched} name no channel group of this "
                f"model; its groups are {[g.name for g in structure.groups]}"
            )
        self.structure = structure
        dense = dict.fromkeys(self.engine.params, 1.0)
        report = flops_report(self.model, tuple(example.shape[1:]), dense)
        self.layer_flops = {layer.name: layer.dense_flops for layer in report.layers}
        self.dense_flops = float(report.dense_forward_flops)
        self._refresh_keep()
        if not self.flops_history:
            self.flops_history.append(self._flops_now(self.engine.num_steps))

    def _require(self) -> Structure:
        if self.structure is None:
            raise RuntimeError(
                "channel sparsity traces the model at its first forward pass: run one "
                "forward before the first optimizer step"
            )
        return self.structure

    def _alive_vectors(
        self, alive_channels: dict[str, torch.Tensor] | None = None
    ) -> dict[str, dict[int, torch.Tensor]]:
        """Per parameter and dimension, whether each position of the model as it is (cut
        positions gone) belongs to channels that remain (``alive_channels``, default the
        alive ones)."""
        alive_channels = self.alive if alive_channels is None else alive_channels
        per_dim: dict[str, dict[int, torch.Tensor]] = {}
        for group in self._require().groups:
            alive = alive_channels[group.name]
            for piece in group.slices:
                size = self.full_shapes[piece.name][piece.dim]
                vector = per_dim.setdefault(piece.name, {}).setdefault(
                    piece.dim, torch.ones(size, dtype=torch.bool)
                )
                vector[piece.index[~alive[piece.channel]]] = False
        for name, dims in per_dim.items():
            for dim, index in self.kept_index.get(name, {}).items():
                if dim in dims:
                    dims[dim] = dims[dim][index]
        return per_dim

    def _refresh_keep(self) -> None:
        """Per parameter, the positions of channels that remain (outer product over dims)."""
        per_dim = self._alive_vectors()
        self.keep = {}
        for name, dims in per_dim.items():
            param = self.named[name]
            keep = torch.ones(param.shape, dtype=torch.bool)
            for dim, vector in dims.items():
                shape = [1] * param.dim()
                shape[dim] = -1
                keep &= vector.view(shape)
            self.keep[name] = keep.to(param.device)

    # ------------------------------------------------------------------ removal
    def final_fraction(self, group: ChannelGroup) -> float:
        """The fraction of ``group`` removed by the end (uniform allocation)."""
        matches = (f for key, f in self.group_final.items() if _names(key, group))
        return next(matches, self.final)

    def minimum(self, group: ChannelGroup) -> int:
        return max(1, math.ceil(self.min_fraction * (1.0 - self.final) * group.size))

    def num_removed(self) -> int:
        return sum(int((~v).sum()) for v in self.alive.values())

    def remove_due(self, step: int) -> dict[str, torch.Tensor]:
        """At a regular update: remove the channels the schedule asks for by ``step``,
        reallocate the budget; returns the positions that became inactive per parameter."""
        if step <= self.start:
            return {}
        structure = self._require()
        params, layout = self.named, self.layout()
        if self.uniform:  # every group loses the same fraction, lowest UMM first inside it
            chosen = {}
            for group in structure.groups:
                share = removed_fraction(step, self.final_fraction(group), self.start, self.end)
                count = round(share * group.size) - int((~self.alive[group.name]).sum())
                if count > 0:
                    scores = {group.name: umm_scores(group, params, layout)}
                    chosen |= select_channels(scores, self.alive, {group.name: 1}, count)
        else:  # Chase: the lowest UMM over all groups, each group above its floor
            fraction = removed_fraction(step, self.final, self.start, self.end)
            count = round(fraction * self._total()) - self.num_removed()
            if count <= 0:
                return {}
            scores = {g.name: umm_scores(g, params, layout) for g in structure.groups}
            minimum = {g.name: self.minimum(g) for g in structure.groups}
            chosen = select_channels(scores, self.alive, minimum, count)
        if not any(chosen.values()):
            return {}
        old_keep = self.keep
        for name, channels in chosen.items():
            self.alive[name][channels] = False
        self._refresh_keep()
        resets = {n: old_keep[n] & ~k for n, k in self.keep.items()}
        self._apply_removal(resets)
        self._reallocate()
        self.flops_history.append(self._flops_now(step))
        return resets

    def _total(self) -> int:
        return sum(len(v) for v in self.alive.values())

    def _apply_removal(self, resets: dict[str, torch.Tensor]) -> None:
        """Zero the removed positions: weights, masks, optimizer state (the engine's own
        masking covers its sparse layers' state; the rest is done here)."""
        engine = self.engine
        keep_state = engine.config.inactive_momentum == "keep"
        with torch.no_grad():
            for name, positions in resets.items():
                param = self.named[name]
                param.masked_fill_(positions, 0.0)
                if name in engine.masks:
                    engine.masks[name] &= ~positions
                if name in engine.sparse_names and keep_state:
                    continue
                for state in self._optimizer_state(param):
                    state.masked_fill_(positions, 0.0)

    def _optimizer_state(self, param: torch.Tensor) -> list[torch.Tensor]:
        optimizer = self.engine.optimizer
        if optimizer is None:
            return []
        state = optimizer.state.get(param, {})
        return [v for v in state.values() if torch.is_tensor(v) and v.shape == param.shape]

    def slim_shape(self, name: str) -> tuple[int, ...]:
        """The shape of parameter ``name`` once the removed channels are cut out."""
        param = self.named[name]
        keep = self.keep.get(name)
        if keep is None:
            return tuple(param.shape)
        shape = []
        for dim in range(param.dim()):
            other = [d for d in range(param.dim()) if d != dim]
            shape.append(int(keep.any(dim=other).sum()) if other else int(keep.sum()))
        return tuple(shape)

    def _reallocate(self) -> None:
        """Re-solve the sparse layers' densities on the slim shapes, same total budget."""
        engine = self.engine
        shapes = {n: self.slim_shape(n) for n in engine.sparse_names}
        total = sum(math.prod(s) for s in shapes.values())
        density = min(1.0, self.budget / max(total, 1))
        densities = layer_densities(shapes, density, engine.config.sparse_init)
        engine.num_active.update(active_counts(shapes, densities))

    # ------------------------------------------------------------------ per step
    def allowed(self, name: str) -> torch.Tensor | None:
        return self.keep.get(name)

    def prune_and_grow(
        self,
        name: str,
        mask: torch.Tensor,
        drop_score: torch.Tensor,
        grow_score: torch.Tensor,
        target: int,
        num_swap: int,
    ) -> LayerUpdate:
        """`prune_and_grow` that ends at ``target`` active weights (the layer's count after a
        reallocation) and grows only inside the remaining channels."""
        allowed = self.keep.get(name)
        current = int(mask.sum())
        if allowed is None and current == target:
            return prune_and_grow(mask, drop_score, grow_score, num_swap)
        # ``num_swap`` is the drop fraction of the new count; a layer that lost weights to a
        # removal swaps that fraction of the weights it still has, not more.
        num_swap = min(num_swap, math.ceil(num_swap * min(current, target) / max(target, 1)))
        num_drop = min(current, num_swap + max(0, current - target))
        num_grow = target - (current - num_drop)
        flat = mask.reshape(-1)
        drop_candidates = drop_score.reshape(-1).masked_fill(~flat, math.inf)
        dropped = lowest(drop_candidates, num_drop)
        new_mask = flat.clone()
        new_mask[dropped] = False
        blocked = new_mask if allowed is None else new_mask | ~allowed.reshape(-1)
        grow_candidates = grow_score.reshape(-1).masked_fill(blocked, -math.inf)
        grown = highest(grow_candidates, num_grow)
        new_mask[grown] = True
        return LayerUpdate(new_mask.view_as(mask), dropped, grown)

    def _removed_outside_masks(self):
        """(parameter, keep) of the parameters the engine does not mask every step."""
        sparse = set(self.engine.sparse_names)
        return [(self.named[n], k) for n, k in self.keep.items() if n not in sparse]

    def zero_removed_(self) -> None:
        """Re-zero removed positions of biases, norms and ERK-dense layers."""
        if not self.num_removed():
            return
        with torch.no_grad():
            for param, keep in self._removed_outside_masks():
                param.mul_(keep.to(param.dtype))

    def mask_gradients_(self) -> None:
        if not self.num_removed():
            return
        for param, keep in self._removed_outside_masks():
            if param.grad is not None:
                param.grad.mul_(keep.to(param.grad.dtype))

    def register_gradient_masking(self) -> list:
        """Autograd hooks zeroing removed positions of the parameters the engine's own hooks
        do not cover (for strategies that never show a full ``.grad``: ZeRO)."""
        sparse = set(self.engine.sparse_names)

        def hook(name: str) -> Callable[[torch.Tensor], torch.Tensor | None]:
            def mask_grad(grad: torch.Tensor) -> torch.Tensor | None:
                keep = self.keep.get(name)
                if keep is None or name in sparse or not self.num_removed():
                    return None
                return grad * keep.to(grad.dtype)

            return mask_grad

        return [p.register_hook(hook(n)) for n, p in self.named.items() if p.requires_grad]

    # ------------------------------------------------------------------ shrinking
    def full_numel(self, name: str) -> int:
        """Positions of parameter ``name`` before any cut."""
        return math.prod(self.full_shapes[name])

    def layout(self) -> dict[str, tuple[tuple[int, ...], dict[int, torch.Tensor]]]:
        """Per parameter with cut dimensions: (full shape, per cut dim the full positions
        kept); what random draws and channel scores need to equal the masked model's."""
        return {n: (self.full_shapes[n], dims) for n, dims in self.kept_index.items()}

    def _last_cut(self, group: str) -> torch.Tensor:
        return self.cut_alive.get(group, torch.ones_like(self.alive[group]))

    def cut_pending(self) -> bool:
        """Whether removed channels are still in the model (shrinking runs cut them)."""
        return self.structure is not None and any(
            bool((self._last_cut(name) & ~alive).any()) for name, alive in self.alive.items()
        )

    def cut_model_(
        self, alive: dict[str, torch.Tensor] | None = None
    ) -> dict[str, dict[int, torch.Tensor]]:
        """Cut the channels not in ``alive`` (default: the removed ones) still in the model
        out of it (sparse/slim.py, the cut that verify.py tried at the start); returns, per
        parameter and dimension, the positions of the old shapes that stay (what every
        tensor shaped like a parameter must be sliced with). Group and channel numbers stay
        those of the full model."""
        from ft_dist.sparse.slim import slim_model

        structure = self._require()
        alive = self.alive if alive is None else alive
        vectors = {
            name: {dim: v for dim, v in dims.items() if not bool(v.all())}
            for name, dims in self._alive_vectors(alive).items()
        }
        vectors = {name: dims for name, dims in vectors.items() if dims}
        removed = {}
        for group in structure.groups:
            before = self._last_cut(group.name)
            position = torch.cumsum(before.long(), 0) - 1  # the channel's number in the model
            gone = before & ~alive[group.name]
            if gone.any():
                removed[group.name] = position[gone].tolist()
        slim_model(self.model, {}, self.example, removed)
        self.named = {strip_wrapper_prefixes(n): p for n, p in self.model.named_parameters()}
        for name, dims in vectors.items():
            for dim, vector in dims.items():
                old = self.kept_index.get(name, {}).get(dim)
                old = torch.arange(len(vector)) if old is None else old
                self.kept_index.setdefault(name, {})[dim] = old[vector.cpu()]
        for name, dims in self.kept_index.items():
            expected = [
                len(dims[d]) if d in dims else size for d, size in enumerate(self.full_shapes[name])
            ]
            if list(self.named[name].shape) != expected:
                raise RuntimeError(
                    f"cutting the removed channels left {name} at "
                    f"{tuple(self.named[name].shape)}, expected {tuple(expected)}; set "
                    "sparsity.channel_shrink=false for this model"
                )
        self.cut_alive = {name: vector.clone() for name, vector in alive.items()}
        self._refresh_keep()
        return vectors

    def cut_record(self) -> dict[str, list[int]]:
        """Per group, the channels cut out of the model (full numbering): what rebuilds its
        architecture from the full model (`ft_dist.sparse.slim.slim_model`)."""
        return {
            name: (~alive).nonzero().flatten().tolist()
            for name, alive in self.cut_alive.items()
            if not bool(alive.all())
        }

    # ------------------------------------------------------------------ FLOPs and stats
    def sparse_forward_flops(self) -> float:
        """Forward FLOPs of one example under the RigL convention: each masked layer at its
        active fraction (a removed channel has none), the rest dense."""
        engine = self.engine
        active = 0.0
        for name, flops in self.layer_flops.items():
            full = self.full_numel(name)
            if name in engine.sparse_names:  # the exact count the update moves it to
                active += flops * engine.num_active[name] / full
            else:
                active += flops * int(engine.masks[name].sum()) / full
        return self.dense_flops_rest() + active

    def dense_flops_rest(self) -> float:
        return self.dense_flops - sum(self.layer_flops.values())

    def slim_dense_flops(self) -> float:
        """What dense kernels execute for the slim network: each layer at its slim size."""
        slim = 0.0
        for name, flops in self.layer_flops.items():
            slim += flops * math.prod(self.slim_shape(name)) / self.full_numel(name)
        return self.dense_flops_rest() + slim

    def _flops_now(self, step: int) -> tuple[int, float, float]:
        return step, self.sparse_forward_flops(), self.slim_dense_flops()

    def segments(self, step: int) -> list[tuple[int, float, float]]:
        """(steps, sparse forward FLOPs, slim dense forward FLOPs) of each stretch of the
        steps before ``step`` that ran between two removals."""
        history = self.flops_history
        ends = [begin for begin, _, _ in history[1:]] + [step]
        return [
            (max(0, min(end, step) - begin), sparse, slim)
            for (begin, sparse, slim), end in zip(history, ends, strict=True)
        ]

    def mean_sparse_forward_flops(self, step: int) -> float:
        """Sparse forward FLOPs averaged over steps [0, step): what training has cost."""
        from ft_dist.sparse.flops import mean_over_steps

        mean = mean_over_steps((n, sparse) for n, sparse, _ in self.segments(step))
        if mean is None:
            return self.flops_history[-1][1] if self.flops_history else 0.0
        return mean

    def stats(self) -> dict[str, float]:
        if self.structure is None:
            return {}
        removed = self.num_removed()
        stats = {
            "sparse/channels/removed": float(removed),
            "sparse/channels/removed_fraction": removed / max(self._total(), 1),
        }
        if self.dense_flops:
            step = self.engine.num_steps
            stats |= {
                "sparse/channels/forward_flops_ratio": self.sparse_forward_flops()
                / self.dense_flops,
                "sparse/channels/slim_dense_flops_ratio": self.slim_dense_flops()
                / self.dense_flops,
                "sparse/channels/mean_forward_flops_ratio": self.mean_sparse_forward_flops(step)
                / self.dense_flops,
            }
        for name, alive in self.alive.items():
            stats[f"sparse/layer/{name}/channels_kept"] = float(alive.sum())
        return stats

    def consistency_masks(self) -> dict[str, torch.Tensor]:
        return {f"channels/{name}": alive for name, alive in self.alive.items()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "alive": {n: v.clone() for n, v in self.alive.items()},
            "num_active": {n: self.engine.num_active[n] for n in self.engine.sparse_names},
            "flops_history": [list(x) for x in self.flops_history],
            "dense_flops": self.dense_flops,
            "cut_alive": {n: v.clone() for n, v in self.cut_alive.items()},
        }

    def load_state_dict(self, state: dict | None) -> None:
        """Restore before the engine checks its counts (they follow the reallocations)."""
        if state is None:
            raise ValueError(
                "this run sets sparsity.channel_sparsity, but the checkpoint was written "
                "without it; resume with the same sparsity settings"
            )
        self.alive = {n: v.clone().bool() for n, v in state["alive"].items()}
        saved_cut = {n: v.bool() for n, v in state.get("cut_alive", {}).items()}
        if not _same_vectors(saved_cut, self.cut_alive):
            raise ValueError(
                "the checkpoint's model has other channels cut than this one; restore the "
                "model's channel cut (Strategy.cut_to) before the sparsity state"
            )
        self.engine.num_active.update({n: int(c) for n, c in state["num_active"].items()})
        self.dense_flops = float(state["dense_flops"])
        # Checkpoints before the slim price kept (step, sparse): their stretches priced full.
        self.flops_history = [
            (int(x[0]), float(x[1]), float(x[2] if len(x) > 2 else self.dense_flops))
            for x in state["flops_history"]
        ]
        if self.structure is not None:
            self.build_from_alive()

    def build_from_alive(self) -> None:
        self._refresh_keep()


def _same_vectors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def verified_structure(
    model: nn.Module, example: torch.Tensor, named: Mapping[str, float] | None = None
) -> Structure:
    """The model's channel groups whose trial cut verifies (sparse/verify.py). A group that
    does not is kept whole, with a warning naming it; one that ``named`` (the keys of
    sparsity.channel_group_sparsity) asks for by name is an error naming the fix."""
    try:
        structure = channel_structure(model, example)
    except ChannelTraceError as error:
        raise ValueError(
            f"sparsity.channel_sparsity: this model's channels cannot be cut: {error}; "
            "set sparsity.channel_sparsity=0 (unstructured DST works on it)"
        ) from None
    groups = {g.name: g for g in structure.groups}
    structure, excluded = verify_structure(model, structure, example)
    for name, problem in excluded:
        asked = [key for key in named or {} if _names(key, groups[name])]
        if asked:
            raise ValueError(
                f"sparsity.channel_group_sparsity: {asked[0]} names channel group {name}, "
                f"which cannot be cut ({problem}); remove that key (the group is then kept "
                "whole)"
            )
        warnings.warn(f"channel group {name} is kept whole: {problem}", Note, stacklevel=2)
    if not structure.groups:
        raise ValueError(
            "sparsity.channel_sparsity: the model has no removable channel group "
            f"(fixed: {[f'{root}: {why}' for root, why in structure.fixed]}); set "
            "sparsity.channel_sparsity=0"
        )
    return structure
