"""DynamicSparsity: attach DST to any model + optimizer pair with one call per step.

    sparsity = DynamicSparsity(model, optimizer, SparsityConfig(density=0.2))
    loss.backward()
    sparsity.step()   # optimizer step, masks held, scheduled prune/grow

Invariants, after construction and after every ``step()`` / ``explore()``:
* inactive weights are exactly 0, and so is their optimizer state (momentum, Adam moments);
* every sparse layer has exactly its allotted number of active weights;
* under torch.distributed, masks are bit-identical on every rank (checked after each update).

Why it holds without extra communication: masks start from a generator seeded identically
on every rank, gradient growth reads the all-reduced gradient (DDP has averaged it before
``step()``), and random growth draws from that shared generator.
"""

from __future__ import annotations

import torch
from torch import nn

from ft_dist.sparse.allocation import active_counts, layer_densities, maskable_parameters
from ft_dist.sparse.config import SparsityConfig
from ft_dist.sparse.consistency import verify_masks_identical
from ft_dist.sparse.schedule import UpdateSchedule
from ft_dist.sparse.scores import gradient_score, magnitude_score, momentum_score, random_score
from ft_dist.sparse.update import num_to_drop, prune_and_grow, random_mask


class DynamicSparsity:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        config: SparsityConfig,
        *,
        global_batch_size: int | None = None,
        process_group=None,
    ) -> None:
        self.config = config
        self.optimizer = optimizer
        self.process_group = process_group
        self.schedule = UpdateSchedule.from_config(config, global_batch_size)
        self.params = maskable_parameters(model, config.dense_layers)
        shapes = {name: tuple(p.shape) for name, p in self.params.items()}
        self.layer_densities = layer_densities(shapes, config.density, config.sparse_init)
        self.num_active = active_counts(shapes, self.layer_densities)
        # Layers that stay fully dense are never masked, pruned or grown.
        self.sparse_names = [n for n, p in self.params.items() if self.num_active[n] < p.numel()]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.masks = {
            name: random_mask(p.shape, self.num_active[name], self.generator).to(p.device)
            if name in self.sparse_names
            else torch.ones_like(p, dtype=torch.bool)
            for name, p in self.params.items()
        }
        self.ever_active = {name: self.masks[name].clone() for name in self.sparse_names}
        self.grad_ema = (
            {name: torch.zeros_like(self.params[name]) for name in self.sparse_names}
            if config.growth == "momentum" and self.schedule.every_steps
            else {}
        )
        self.num_steps = 0
        self.num_updates = 0
        # name -> (dropped, grown, newly active) of the latest update
        self.last_update: dict[str, tuple[int, int, int]] = {}
        # name -> positions the latest update zeroed (dropped and grown): wrappers holding
        # their own copies of the weights (DeepSpeed's fp32 masters) reset the same positions.
        self.last_reset: dict[str, torch.Tensor] = {}
        self._refresh_float_masks()
        self.apply_masks_()
        self.check_consistency()

    # ------------------------------------------------------------------ training-time API
    def step(self) -> None:
        """Optimizer step with inactive gradients zeroed, then a prune/grow if one is due."""
        due = self.schedule.is_update_step(self.num_steps + 1)
        if self.grad_ema:
            self._accumulate_grad_ema()
        grow_scores = self._gradient_scores() if due and self.config.growth == "gradient" else None
        self.mask_gradients_()
        if self.optimizer is not None:
            self.optimizer.step()
        self.mask_weights_()
        self.num_steps += 1
        if due:
            fraction = self.schedule.drop_fraction_at(self.num_steps)
            self._update(fraction, self.config.growth, grow_scores)

    def explore(self, drop_fraction: float, growth: str | None = None) -> None:
        """One out-of-schedule update (EDST global exploration between refinement phases).

        Gradient growth reads the current ``.grad``: call this after ``backward()`` and
        before ``step()`` (which zeroes inactive gradients); random growth needs no gradient.
        """
        if not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"explore drop_fraction must be in [0, 1], got {drop_fraction}")
        growth = growth or self.config.growth
        if growth == "momentum" and not self.grad_ema:
            raise ValueError(
                "momentum growth needs sparsity.growth=momentum (for the gradient EMA)"
            )
        scores = self._gradient_scores() if growth == "gradient" else None
        self._update(drop_fraction, growth, scores)

    def mask_gradients_(self) -> None:
        for name in self.sparse_names:
            grad = self.params[name].grad
            if grad is not None:
                grad.mul_(self._float_masks[name])

    def mask_weights_(self) -> None:
        with torch.no_grad():
            for name in self.sparse_names:
                self.params[name].mul_(self._float_masks[name])

    def apply_masks_(self) -> None:
        """Zero inactive weights and their optimizer state (after init or load)."""
        self.mask_weights_()
        for name in self.sparse_names:
            for state in self._optimizer_state(name):
                state.mul_(self._float_masks[name])

    def check_consistency(self) -> int:
        """Compare mask checksums across ranks; returns bytes sent (0 outside distributed)."""
        if not self.config.check_consistency:
            return 0
        sparse_masks = {name: self.masks[name] for name in self.sparse_names}
        return verify_masks_identical(sparse_masks, self.process_group)

    # ------------------------------------------------------------------ the update
    def _update(self, drop_fraction: float, growth: str, grow_scores: dict | None) -> None:
        self.last_update, self.last_reset = {}, {}
        with torch.no_grad():
            for name in self.sparse_names:
                weight, mask = self.params[name], self.masks[name]
                num_swap = num_to_drop(self.num_active[name], drop_fraction)
                grow_score = self._grow_score(name, growth, grow_scores)
                result = prune_and_grow(mask, magnitude_score(weight), grow_score, num_swap)
                grown = torch.zeros_like(mask)
                grown.view(-1)[result.grown] = True
                num_new = int((result.mask & ~mask).sum())  # grown and not just re-grown
                mask.copy_(result.mask)
                # Dropped weights leave, grown ones (re-grown just-dropped ones too) start at 0,
                # and neither keeps any optimizer state.
                reset = grown | ~mask
                self.last_reset[name] = reset
                weight.masked_fill_(reset, 0.0)
                for state in self._optimizer_state(name):
                    state.masked_fill_(reset, 0.0)
                self.ever_active[name] |= mask
                self.last_update[name] = (result.dropped.numel(), result.grown.numel(), num_new)
        self.num_updates += 1
        self._refresh_float_masks()
        self.check_consistency()

    def _grow_score(self, name: str, growth: str, grow_scores: dict | None) -> torch.Tensor:
        param = self.params[name]
        if growth == "gradient":
            if grow_scores is None or grow_scores.get(name) is None:
                raise ValueError(
                    f"gradient growth needs the gradient of {name}: call after loss.backward()"
                )
            return grow_scores[name]
        if growth == "momentum":
            return momentum_score(self.grad_ema[name])
        if growth == "random":
            return random_score(param.shape, self.generator, param.device)
        raise ValueError(f"growth must be gradient, random or momentum, got {growth!r}")

    def _gradient_scores(self) -> dict[str, torch.Tensor | None]:
        return {
            name: None if self.params[name].grad is None else gradient_score(self.params[name].grad)
            for name in self.sparse_names
        }

    def _accumulate_grad_ema(self) -> None:
        beta = self.config.momentum_beta
        for name, ema in self.grad_ema.items():
            grad = self.params[name].grad
            if grad is not None:
                ema.mul_(beta).add_(grad, alpha=1.0 - beta)

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
        active = sum(int(self.masks[n].sum()) for n in self.params)
        dropped = sum(d for d, _, _ in self.last_update.values())
        grown = sum(g for _, g, _ in self.last_update.values())
        newly_active = sum(c for _, _, c in self.last_update.values())
        sparse_total = sum(self.params[n].numel() for n in self.sparse_names)
        ever = sum(int(self.ever_active[n].sum()) for n in self.sparse_names)
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
        }
        for name in self.params:
            stats[f"sparse/layer/{name}/density"] = float(self.masks[name].float().mean())
            dropped_l, grown_l, _ = self.last_update.get(name, (0, 0, 0))
            stats[f"sparse/layer/{name}/dropped"] = float(dropped_l)
            stats[f"sparse/layer/{name}/grown"] = float(grown_l)
        return stats

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
            "grad_ema": {n: t.cpu().clone() for n, t in self.grad_ema.items()},
            "last_update": {n: list(v) for n, v in self.last_update.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; a state from another model or density is refused."""
        self._check_compatible(state)
        self.num_steps = int(state["num_steps"])
        self.num_updates = int(state["num_updates"])
        self.generator.set_state(state["generator"])
        for name, mask in state["masks"].items():
            self.masks[name].copy_(mask)
        for name, mask in state["ever_active"].items():
            self.ever_active[name].copy_(mask)
        for name, ema in state["grad_ema"].items():
            self.grad_ema[name].copy_(ema)
        self.last_update = {n: tuple(int(x) for x in v) for n, v in state["last_update"].items()}
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
        for name, mask in state["masks"].items():
            if name in self.sparse_names and int(mask.sum()) != self.num_active[name]:
                raise ValueError(
                    f"sparsity state for {name} has {int(mask.sum())} active weights, this run "
                    f"expects {self.num_active[name]} (sparse_init or density differ)"
                )
