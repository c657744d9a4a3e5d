"""DynamicSparsity: attach DST to any model + optimizer pair with one call per step.

    sparsity = DynamicSparsity(model, optimizer, SparsityConfig(density=0.2))
    loss.backward()
    sparsity.step()   # optimizer step, masks held, scheduled prune/grow

A strategy that owns its optimizer step (DeepSpeed, FSDP later) calls the two hooks that
``step()`` is made of, around its own step, the same way every time:

    sparsity.before_optimizer_step(full_grads)    # dense, all-reduced gradients (or .grad)
    engine.step()
    resets = sparsity.after_optimizer_step()      # {name: positions its weight copies must zero}

Invariants, after construction and after every ``step()`` / ``explore()``:
* inactive weights are exactly 0, and so is their optimizer state (momentum, Adam moments);
* every sparse layer has exactly its allotted number of active weights;
* under torch.distributed, masks are bit-identical on every rank (checked after each update).

Why it holds without extra communication: masks start from a generator seeded identically
on every rank, gradient growth reads the all-reduced gradient (DDP has averaged it before
``step()``), and random growth draws from that shared generator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import torch
from torch import nn

from ft_dist.sparse.allocation import active_counts, layer_densities, maskable_parameters
from ft_dist.sparse.channels import ChannelSparsity
from ft_dist.sparse.choices import official_behaviour
from ft_dist.sparse.config import SparsityConfig
from ft_dist.sparse.consistency import verify_masks_identical
from ft_dist.sparse.schedule import UpdateSchedule
from ft_dist.sparse.scores import Criterion, ScoreInputs, drop_criterion, growth_criterion
from ft_dist.sparse.slim import check_slim, slim_tensor
from ft_dist.sparse.update import num_to_drop, prune_and_grow, random_mask


def move_optimizer_state_(
    optimizer: torch.optim.Optimizer,
    moves: Mapping[torch.Tensor, tuple[torch.Tensor, Mapping[int, torch.Tensor]]],
) -> None:
    """Point ``optimizer`` at new parameters: old parameter -> (new parameter, per dimension
    the positions of the old one it kept). Per-weight state is sliced alike; scalars (Adam's
    step) are kept."""
    for group in optimizer.param_groups:
        group["params"] = [moves[p][0] if p in moves else p for p in group["params"]]
    for old, (new, dims) in moves.items():
        state = optimizer.state.pop(old, None)
        if state is not None:
            optimizer.state[new] = {
                key: slim_tensor(value, dims)
                if torch.is_tensor(value) and value.shape == old.shape
                else value
                for key, value in state.items()
            }


class DynamicSparsity:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        config: SparsityConfig,
        *,
        global_batch_size: int | None = None,
        process_group=None,
        decay_period: Callable[[int], tuple[int, int] | None] | None = None,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.config = config
        self.optimizer = optimizer
        self.process_group = process_group
        self.schedule = UpdateSchedule.from_config(config, global_batch_size)
        # step -> (start step, length) of the drop-fraction decay period it falls in (an EDST
        # run restarts the cosine in every phase); None = the schedule's own [0, stop_step].
        self.decay_period = decay_period
        self.params = maskable_parameters(
            model, config.dense_layers, config.include, config.exclude
        )
        shapes = {name: tuple(p.shape) for name, p in self.params.items()}
        self.layer_densities = layer_densities(shapes, config.density, config.sparse_init)
        self.num_active = active_counts(shapes, self.layer_densities)
        # Layers that stay fully dense are never masked, pruned or grown.
        self.sparse_names = [n for n, p in self.params.items() if self.num_active[n] < p.numel()]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.masks = {
            name: self._placed(random_mask(p.shape, self.num_active[name], self.generator), p)
            if name in self.sparse_names
            else torch.ones_like(p, dtype=torch.bool)
            for name, p in self.params.items()
        }
        self.ever_active = {name: self.masks[name].clone() for name in self.sparse_names}
        # Positions grown at the latest update, and whether they survive the next one:
        # (kept with their value, grown) of the latest update, and summed over the run.
        self.last_grown = {name: torch.zeros_like(self.masks[name]) for name in self.sparse_names}
        self.grown_kept = (0, 0)
        self.grown_kept_run = (0, 0)
        self.growth = growth_criterion(config.growth)
        self.drop = drop_criterion(config.drop)
        self.compat = official_behaviour(config.compat)  # sparsity.compat: sparse/official.py
        # role -> layer -> EMA of the criterion's ema_of(grad): growth and drop each read
        # their own (an EMA criterion as drop must not read the growth criterion's EMA).
        self.grad_emas: dict[str, dict[str, torch.Tensor]] = {
            role: {name: torch.zeros_like(self.params[name]) for name in self.sparse_names}
            for role, criterion in (("growth", self.growth), ("drop", self.drop))
            if criterion.ema_of is not None and self.schedule.every_steps
        }
        self.num_steps = 0
        self.num_updates = 0
        self._capture_requested = False  # keep_dense_gradients() for the coming step
        self._update_grads: dict[str, torch.Tensor] = {}  # kept by hook 1 for the update
        # name -> (dropped, grown, newly active) of the latest update
        self.last_update: dict[str, tuple[int, int, int]] = {}
        # Channel-level DST (sparse/channels.py); None = unstructured only, as before.
        self.channels = ChannelSparsity(self, model) if config.channel_sparsity > 0 else None
        if self.channels is not None and input_shape is not None:  # else at the first forward
            self.channels.trace(input_shape)
        self._refresh_float_masks()
        self.apply_masks_()
        self.check_consistency()

    # ------------------------------------------------------------------ training-time API
    def step(self) -> None:
        """A plain loop's step: the two hooks around the optimizer's own ``step()``."""
        self.before_optimizer_step()
        if self.optimizer is not None:
            self.optimizer.step()
        self.after_optimizer_step()

    def update_due(self) -> bool:
        """Whether the coming optimizer step ends with a scheduled prune/grow."""
        return self.schedule.is_update_step(self.num_steps + 1)

    def keep_dense_gradients(self, keep: bool = True) -> None:
        """Ask that the coming step's dense gradients survive gradient masking (an EDST
        exploration right after the step grows from them)."""
        self._capture_requested = keep

    def wants_dense_gradients(self) -> bool:
        """Whether the coming step needs the dense gradient of inactive weights: a gradient-
        growth update is due, the EMA of momentum growth reads every step, a capture was
        asked for, or the official CIFAR behaviour feeds dense gradients to the optimizer."""
        return (
            self._capture_requested
            or bool(self.grad_emas)
            or self.config.inactive_momentum == "keep"
            or (self.update_due() and self._update_reads_gradient(self.growth))
        )

    def before_optimizer_step(self, grads: Mapping[str, torch.Tensor] | None = None) -> None:
        """Hook 1, after the last backward of a step: ``grads`` are the dense, all-reduced
        gradients of the sparse layers (default: each weight's ``.grad``). Keeps what growth
        will read, feeds the momentum EMA, then zeroes inactive ``.grad`` entries so the
        optimizer cannot move inactive weights (unless ``inactive_momentum=keep``)."""
        grads = self._gradients(grads)
        if self.grad_emas:
            self._accumulate_grad_emas(grads)
        due = self.update_due()
        self._update_grads = self._kept_gradients(grads, self.growth) if due else {}
        if self.config.inactive_momentum == "zero":
            self.mask_gradients_()

    def after_optimizer_step(self) -> dict[str, torch.Tensor]:
        """Hook 2, after the optimizer moved the weights: re-zero inactive weights, count the
        step, prune and grow when due. Returns, per layer, the bool positions that wrappers
        holding their own copy of the weights (fp32 masters, sharded optimizer state) must
        zero: after an update, every dropped, grown and inactive position; after a step that
        let dense gradients through, every inactive position; otherwise nothing."""
        dense_step = self.wants_dense_gradients()
        due = self.update_due()
        self.mask_weights_()
        self.num_steps += 1
        self._capture_requested = False
        if due:
            fraction = self.drop_fraction_now()
            removed = self.channels.remove_due(self.num_steps) if self.channels else {}
            resets = removed | self._update(fraction, self.growth, self._update_grads)
        elif dense_step:
            resets = {name: ~self.masks[name] for name in self.sparse_names}
        else:
            resets = {}
        self._update_grads = {}
        return resets

    def drop_fraction_now(self) -> float:
        """The drop fraction of an update after ``num_steps`` steps (cosine restarts per
        decay period when a ``decay_period`` is given)."""
        period = self.decay_period(self.num_steps) if self.decay_period else None
        if period is None:
            return self.schedule.drop_fraction_at(self.num_steps)
        return self.schedule.drop_fraction_at(self.num_steps, *period)

    def explore(
        self,
        drop_fraction: float,
        growth: str | None = None,
        grads: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One out-of-schedule update (EDST global exploration between refinement phases).

        Gradient growth reads ``grads`` (default: the current ``.grad``: call this after
        ``backward()`` and before ``step()``, which masks it); random growth needs none.
        Returns the positions reset, as `after_optimizer_step` does.
        """
        if not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"explore drop_fraction must be in [0, 1], got {drop_fraction}")
        criterion = growth_criterion(growth or self.config.growth)
        if criterion.ema_of is not None and criterion is not self.growth:
            raise ValueError(
                f"{growth} growth keeps a gradient EMA from the start of training: set "
                f"sparsity.growth={growth} to explore with it"
            )
        return self._update(drop_fraction, criterion, self._kept_gradients(grads, criterion))

    def register_gradient_masking(self) -> list:
        """Zero inactive gradients as autograd produces them (tensor hooks, before any
        wrapper accumulates or shards them), except on steps that `wants_dense_gradients`.
        For strategies whose optimizer never shows us a full ``.grad`` (ZeRO 1/2). Returns
        the hook handles."""

        def hook(name: str) -> Callable[[torch.Tensor], torch.Tensor | None]:
            def mask_grad(grad: torch.Tensor) -> torch.Tensor | None:
                if self.wants_dense_gradients():
                    return None
                return grad * self._float_masks[name].to(grad.dtype)

            return mask_grad

        handles = [self.params[n].register_hook(hook(n)) for n in self.sparse_names]
        return handles + (self.channels.register_gradient_masking() if self.channels else [])

    def mask_gradients_(self) -> None:
        for name in self.sparse_names:
            grad = self.params[name].grad
            if grad is not None:
                grad.mul_(self._float_masks[name])
        if self.channels is not None:
            self.channels.mask_gradients_()

    def mask_weights_(self) -> None:
        with torch.no_grad():
            for name in self.sparse_names:
                self.params[name].mul_(self._float_masks[name])
        if self.channels is not None:
            self.channels.zero_removed_()

    def apply_masks_(self) -> None:
        """Zero inactive weights and their optimizer state (after init or load)."""
        self.mask_weights_()
        if self.config.inactive_momentum == "keep":
            return
        for name in self.sparse_names:
            for state in self._optimizer_state(name):
                state.mul_(self._float_masks[name])

    def check_consistency(self) -> int:
        """Compare mask checksums across ranks; returns bytes sent (0 outside distributed)."""
        if not self.config.check_consistency:
            return 0
        sparse_masks = {name: self.masks[name] for name in self.sparse_names}
        if self.channels is not None:
            sparse_masks |= self.channels.consistency_masks()
        return verify_masks_identical(sparse_masks, self.process_group)

    # ------------------------------------------------------------------ the update
    def _update(
        self, drop_fraction: float, growth: Criterion, grads: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Prune and grow every sparse layer; returns the positions each layer reset."""
        saved = self.compat.before_update(self) if self.compat is not None else None
        self.last_update, resets = {}, {}
        keep_state = self.config.inactive_momentum == "keep"
        layout = self.channels.layout() if self.channels is not None else {}
        kept_now = grown_before = 0
        with torch.no_grad():
            for name in self.sparse_names:
                weight, mask = self.params[name], self.masks[name]
                full_shape, kept = layout.get(name, (None, None))
                recent = self.last_grown[name] if self.num_updates else None
                inputs = ScoreInputs(
                    weight,
                    grads.get(name),
                    self._ema("drop", name),
                    self.generator,
                    mask,
                    full_shape,
                    kept,
                    recent,
                )
                # Drop before growth: a random growth score draws from the shared generator
                # after the drop's draws, in the same order on every rank.
                drop_score = self.drop.score(inputs)
                grow_score = growth.score(replace(inputs, grad_ema=self._ema("growth", name)))
                # An exempting drop (+inf scores) takes its fraction of the others only.
                exempt = self._count(mask & drop_score.isinf()) if self.drop.exempts else 0
                num_swap = num_to_drop(  # compat modes: the official ceil(f * n)
                    self.num_active[name] - exempt,
                    drop_fraction,
                    official=self.compat is not None,
                )
                new_mask, grown, counts = self._select(
                    name, mask, drop_score, grow_score, num_swap, balanced=growth.balanced
                )
                mask.copy_(new_mask)
                # Dropped weights leave, grown ones (re-grown just-dropped ones too) start at 0,
                # and neither keeps any optimizer state (unless the official CIFAR behaviour
                # is asked for: inactive_momentum=keep never resets momentum).
                reset = grown | ~mask
                resets[name] = reset
                weight.masked_fill_(reset, 0.0)
                for state in [] if keep_state else self._optimizer_state(name):
                    state.masked_fill_(reset, 0.0)
                self.ever_active[name] |= mask
                # Grown last time and neither dropped nor re-grown (reset to 0) now.
                kept_now += self._count(self.last_grown[name] & ~reset)
                grown_before += self._count(self.last_grown[name])
                self.last_grown[name] = grown
                self.last_update[name] = counts
        if grown_before:
            self.grown_kept = (kept_now, grown_before)
            run_kept, run_grown = self.grown_kept_run
            self.grown_kept_run = (run_kept + kept_now, run_grown + grown_before)
        self.num_updates += 1
        self._refresh_float_masks()
        self.check_consistency()
        if self.compat is not None:  # the official code's update quirks, on request
            resets = self.compat.after_update(self, drop_fraction, saved, resets)
        return resets

    def _select(
        self,
        name: str,
        mask: torch.Tensor,
        drop_score: torch.Tensor,
        grow_score: torch.Tensor,
        num_swap: int,
        balanced: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        """One layer's prune-and-grow choice: (new mask, grown positions as a bool mask,
        (dropped, grown, newly active) counts). Sharded engines choose across ranks
        (sparse/sharded.py)."""
        if self.channels is None:
            result = prune_and_grow(mask, drop_score, grow_score, num_swap, balanced=balanced)
        else:  # to the count after a reallocation, inside the remaining channels
            target = self.num_active[name]
            result = self.channels.prune_and_grow(
                name, mask, drop_score, grow_score, target, num_swap
            )
        grown = torch.zeros_like(mask)
        grown.view(-1)[result.grown] = True
        num_new = int((result.mask & ~mask).sum())  # grown and not just re-grown
        return result.mask, grown, (result.dropped.numel(), result.grown.numel(), num_new)

    def _placed(self, mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """A full-shape mask drawn on the CPU, placed like ``param`` (sharded engines keep
        only their shard)."""
        return mask.to(param.device)

    def _active_counts(self, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Active positions per layer (sharded engines sum their shards across ranks)."""
        return {name: int(mask.sum()) for name, mask in masks.items()}

    def _count(self, positions: torch.Tensor) -> int:
        """True positions of one layer's bool tensor (sharded engines sum across ranks)."""
        return int(positions.sum())

    def parameter(self, name: str) -> torch.Tensor:
        """A parameter that resets may name: a masked weight, or (channel-level DST) a bias
        or norm parameter of a removed channel."""
        if name in self.params:
            return self.params[name]
        if self.channels is not None and name in self.channels.named:
            return self.channels.named[name]
        raise KeyError(f"{name} is not a parameter the sparsity engine resets")

    def full_numel(self, name: str) -> int:
        """Positions of weight ``name`` before channels were cut out of it."""
        if self.channels is not None:
            return self.channels.full_numel(name)
        return self.params[name].numel()

    def cut_pending(self) -> bool:
        """Whether channels were removed since the model was last cut and a shrinking run
        (sparsity.channel_shrink) should cut them out now (`cut_channels_`)."""
        return self.channels is not None and self.channels.shrink and self.channels.cut_pending()

    def cut_channels_(
        self, alive: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, dict[int, torch.Tensor]]:
        """Cut the removed channels (those not in ``alive``, when given) out of the model,
        and every tensor shaped like one of
        its parameters with them: masks, ever-active, gradient EMAs, kept gradients and
        the torch optimizer's state (its parameter groups then hold the new parameters).
        Returns per parameter and dimension the positions that stay, for the strategy's
        own copies (wrappers, captured gradients, sharded state). Every rank, same step."""
        channels = self.channels
        if channels is None:
            raise RuntimeError("only channel-level DST cuts channels")
        old_params = dict(channels.named)
        vectors = channels.cut_model_(None if alive is None else dict(alive))
        new_params = channels.named

        def cut(name: str, tensor: torch.Tensor) -> torch.Tensor:
            return slim_tensor(tensor, vectors.get(name, {}))

        self.params = {name: new_params[name] for name in self.params}
        self.masks = {n: cut(n, m) for n, m in self.masks.items()}
        self.ever_active = {n: cut(n, m) for n, m in self.ever_active.items()}
        self.last_grown = {n: cut(n, m) for n, m in self.last_grown.items()}
        self.grad_emas = {
            role: {n: cut(n, t) for n, t in emas.items()} for role, emas in self.grad_emas.items()
        }
        self._update_grads = {n: cut(n, g) for n, g in self._update_grads.items()}
        if self.optimizer is not None:
            moves = {
                old_params[n]: (new_params[n], vectors.get(n, {}))
                for n in old_params
                if new_params[n] is not old_params[n]
            }
            move_optimizer_state_(self.optimizer, moves)
        check_slim(channels.model, self.masks)
        self._refresh_float_masks()
        return vectors

    def cut_to(self, cut_alive: Mapping[str, torch.Tensor]) -> dict[str, dict[int, torch.Tensor]]:
        """Cut the model to the channels ``cut_alive`` keeps (a checkpoint's record, before
        its sparsity state loads): the model must be as built, nothing cut yet."""
        channels = self.channels
        if channels is None or channels.structure is None:
            raise ValueError(
                "the checkpoint holds a model with channels cut out: resume with the same "
                "sparsity.channel_sparsity (and a model input shape, as `ft-dist train` has)"
            )
        if channels.cut_alive:
            raise RuntimeError("cut_to restores a checkpoint's cut into a model not yet cut")
        return self.cut_channels_({n: v.bool() for n, v in cut_alive.items()})

    def current_gradients(self) -> dict[str, torch.Tensor]:
        """Each sparse weight's ``.grad`` (those that have one)."""
        return self._gradients(None)

    def _gradients(self, grads: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The given dense gradients, or each sparse weight's ``.grad`` (skipping None)."""
        if grads is not None:
            return dict(grads)
        return {
            name: self.params[name].grad
            for name in self.sparse_names
            if self.params[name].grad is not None
        }

    def _update_reads_gradient(self, growth: Criterion) -> bool:
        return growth.needs_gradient or self.drop.needs_gradient

    def _kept_gradients(
        self, grads: Mapping[str, torch.Tensor] | None, growth: Criterion
    ) -> dict[str, torch.Tensor]:
        """Copies of the dense gradients when the update's drop or growth criterion reads
        them (masking happens in place right after), else nothing."""
        if not self._update_reads_gradient(growth):
            return {}
        return {name: g.detach().clone() for name, g in self._gradients(grads).items()}

    def _ema(self, role: str, name: str) -> torch.Tensor | None:
        return self.grad_emas.get(role, {}).get(name)

    def _accumulate_grad_emas(self, grads: Mapping[str, torch.Tensor]) -> None:
        beta = self.config.momentum_beta
        for role, emas in self.grad_emas.items():
            ema_of = {"growth": self.growth, "drop": self.drop}[role].ema_of
            for name, ema in emas.items():
                grad = grads.get(name)
                if grad is not None:
                    ema.mul_(beta).add_(ema_of(grad.detach()).to(ema.dtype), alpha=1.0 - beta)

    def _optimizer_state(self, name: str) -> list[torch.Tensor]:
        """Per-weight optimizer tensors (momentum buffer, Adam moments) of one parameter."""
        if self.optimizer is None:
            return []
        param = self.params[name]
        state = self.optimizer.state.get(param, {})
        return [v for v in state.values() if torch.is_tensor(v) and v.shape == param.shape]

    def _refresh_float_masks(self) -> None:
        self._float_masks = {
            name: self.masks[name].to(self.params[name].dtype) for name in self.sparse_names
        }

    # ------------------------------------------------------------------ reporting and state
    def stats(self) -> dict[str, float]:
        """Global and per-layer density, last update's dropped/grown counts, mask turnover and
        the fraction of weights ever active (how much of the network DST has explored)."""
        total = sum(p.numel() for p in self.params.values())
        active_per_layer = self._active_counts(self.masks)
        active = sum(active_per_layer.values())
        dropped = sum(d for d, _, _ in self.last_update.values())
        grown = sum(g for _, g, _ in self.last_update.values())
        newly_active = sum(c for _, _, c in self.last_update.values())
        sparse_total = sum(self.params[n].numel() for n in self.sparse_names)
        ever = sum(self._active_counts(self.ever_active).values())
        dense_total = total - sparse_total
        stats = {
            "sparse/density": active / total,
            "sparse/num_active": float(active),
            "sparse/num_updates": float(self.num_updates),
            "sparse/dropped": float(dropped),
            "sparse/grown": float(grown),
            # Fraction of the sparse layers' active weights that are new since the last update.
            "sparse/turnover": newly_active / max(1, active - dense_total),
            "sparse/ever_active": (ever + dense_total) / total,
        } | self.survival_stats(active, grown, total)
        for name in self.params:
            stats[f"sparse/layer/{name}/density"] = (
                active_per_layer[name] / self.params[name].numel()
            )
            dropped_l, grown_l, _ = self.last_update.get(name, (0, 0, 0))
            stats[f"sparse/layer/{name}/dropped"] = float(dropped_l)
            stats[f"sparse/layer/{name}/grown"] = float(grown_l)
        return stats | (self.channels.stats() if self.channels else {})

    def survival_stats(self, active: int, grown: int, total: int) -> dict[str, float]:
        """Whether grown weights live (once two updates have run): the share of the previous
        update's grown weights the latest one kept with their value (a drop and re-grow in
        place counts as lost), the same over the whole run, and the density that trains
        for real: the active weights less the grown ones expected to be lost again."""
        kept, of = self.grown_kept
        if not of:
            return {}
        share = kept / of
        run_kept, run_of = self.grown_kept_run
        return {
            "sparse/grown_kept": share,
            "sparse/grown_kept_run": run_kept / run_of,
            "sparse/effective_density": (active - grown * (1.0 - share)) / total,
        }

    def state_dict(self) -> dict:
        """Everything that changes future updates: masks, counters, shared generator, EMA."""
        return {
            "density": self.config.density,
            "sparse_init": self.config.sparse_init,
            "num_steps": self.num_steps,
            "num_updates": self.num_updates,
            "generator": self.generator.get_state(),
            "masks": {n: m.cpu().clone() for n, m in self.masks.items()},
            "ever_active": {n: m.cpu().clone() for n, m in self.ever_active.items()},
            # the growth criterion's EMA keeps its old key; a drop criterion's has its own
            "grad_ema": {n: t.cpu().clone() for n, t in self.grad_emas.get("growth", {}).items()},
            "drop_grad_ema": {
                n: t.cpu().clone() for n, t in self.grad_emas.get("drop", {}).items()
            },
            "last_update": {n: list(v) for n, v in self.last_update.items()},
            "last_grown": {n: m.cpu().clone() for n, m in self.last_grown.items()},
            # A tensor: a sharded engine's checkpoint (torch.distributed.checkpoint) keeps
            # only tensors and the keys a fresh state has.
            "grown_kept": torch.tensor([*self.grown_kept, *self.grown_kept_run]),
        } | ({"channels": self.channels.state_dict()} if self.channels else {})

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; a state from another model or density is refused."""
        if self.channels is not None:  # first: the per-layer counts follow its removals
            self.channels.load_state_dict(state.get("channels"))
        elif state.get("channels"):
            raise ValueError(
                "the checkpoint was written with sparsity.channel_sparsity > 0; resume with "
                "the same sparsity settings"
            )
        self._check_compatible(state)
        self.num_steps = int(state["num_steps"])
        self.num_updates = int(state["num_updates"])
        self.generator.set_state(state["generator"])
        for name, mask in state["masks"].items():
            self.masks[name].copy_(mask)
        for name, mask in state["ever_active"].items():
            self.ever_active[name].copy_(mask)
        for role, key in (("growth", "grad_ema"), ("drop", "drop_grad_ema")):
            for name, ema in state.get(key, {}).items():
                self.grad_emas[role][name].copy_(ema)
        self.last_update = {n: tuple(int(x) for x in v) for n, v in state["last_update"].items()}
        for name, mask in state.get("last_grown", {}).items():  # older checkpoints: none
            self.last_grown[name].copy_(mask)
        counts = [int(x) for x in state.get("grown_kept", (0, 0, 0, 0))]
        self.grown_kept, self.grown_kept_run = (counts[0], counts[1]), (counts[2], counts[3])
        self._refresh_float_masks()
        self.apply_masks_()
        self.check_consistency()

    def _check_compatible(self, state: dict) -> None:
        if abs(float(state["density"]) - self.config.density) > 1e-12:
            raise ValueError(
                f"sparsity state was saved at density {state['density']}, but this run uses "
                f"sparsity.density={self.config.density}; resume with the same density"
            )
        saved = {n: tuple(m.shape) for n, m in state["masks"].items()}
        current = {n: tuple(m.shape) for n, m in self.masks.items()}
        if saved != current:
            missing = sorted(set(current) - set(saved))
            extra = sorted(set(saved) - set(current))
            reshaped = sorted(n for n in set(saved) & set(current) if saved[n] != current[n])
            raise ValueError(
                "sparsity state does not match this model (was it saved from another model?): "
                f"missing layers {missing}, unexpected layers {extra}, different shapes {reshaped}"
            )
        for name, count in self._active_counts(state["masks"]).items():
            if name in self.sparse_names and count != self.num_active[name]:
                raise ValueError(
                    f"sparsity state for {name} has {count} active weights, this run "
                    f"expects {self.num_active[name]} (sparse_init or density differ)"
                )
