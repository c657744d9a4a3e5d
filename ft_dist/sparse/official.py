"""``sparsity.compat``: what the published FreeTickets code does in its update, on request.

ft_dist's update is SPEC §4. Three behaviours of the official code (VITA-Group/FreeTickets,
commit e5540d1) change results and are reproduced here, each behind one compat mode:

``official-cifar`` (sparselearning/core.py, main_EDST.py, main_DST.py)
    * momentum of inactive and grown weights builds from the dense gradient and is never
      reset (the momentum masking in ``apply_mask`` is commented out): implies
      ``inactive_momentum: keep``, which the engine already implements;
    * layers that ERK makes fully dense are magnitude-pruned like any layer at every
      update: ``truncate_weights`` sets the ``ceil(f * numel)`` smallest-magnitude weights
      to zero (``|w| <= threshold``, ``apply_mask`` between death and growth), and only
      growth sets their mask back to all ones (``gradient_growth``, ``density_dict == 1``).
      So they lose half their weights at each update and 80 % at an exploration, and
      train back from zero. `OfficialCifar.after_update` does this.

``official-imagenet`` (ImageNet/core.py, ImageNet/funcs.py)
    * weights dropped and regrown in the same update keep their value and momentum:
      ``truncate_weights`` prunes into the mask and grows into it without an
      ``apply_mask`` in between, so a regrown position was never zeroed; ``apply_mask``
      after growth zeroes the weight and momentum of positions inactive afterwards only.
      ft_dist zeroes every grown weight (SPEC §4.4); `OfficialImagenet` puts the value
      and optimizer state back at positions active both before and after the update.
    * inactive momentum is zeroed after every step (as ft_dist's default ``zero``).

Both modes also count the weights to drop as the official code does, ``math.ceil(f * n)``
rather than SPEC §4's ``ceil(f * n - 1e-9)`` (they differ when f * n lands just above an
integer in floating point: f = 0.07, n = 100 drops 8, not 7): the engine passes
``official=True`` to ``update.num_to_drop`` whenever a mode is set.
The engine calls ``before_update`` / ``after_update`` around each prune-and-grow
(scheduled or exploration) and nowhere else; with ``compat: none`` it holds no object. The
modes' names and the momentum each fixes (torch-free, for the config) are
sparse/choices.py ``COMPAT_MODES``.
The fixtures in tests/fixtures/official_compat were produced by running the official
code; tests/sparse/test_official_compat.py replays them through the engine.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ft_dist.sparse.dynamic import DynamicSparsity


class OfficialCifar:
    """sparselearning/core.py: ERK-dense layers lose their smallest weights at each update."""

    def before_update(self, engine: DynamicSparsity) -> None:
        return None

    def after_update(
        self,
        engine: DynamicSparsity,
        drop_fraction: float,
        saved: None,
        resets: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for name, weight in engine.params.items():
                if name in engine.sparse_names:
                    continue
                # magnitude_death: k = ceil(rate * active), threshold = the k-th smallest |w|,
                # keep |w| > threshold (ties at the threshold go too).
                count = math.ceil(drop_fraction * engine.full_numel(name))
                if count == 0:
                    continue
                # Counted on the full layer: positions of channels cut out of it (shrinking
                # runs) were zeros, the smallest magnitudes.
                count -= engine.full_numel(name) - weight.numel()
                magnitude = weight.detach().abs()
                threshold = magnitude.flatten().kthvalue(count).values if count > 0 else 0.0
                zeroed = magnitude <= threshold
                weight.masked_fill_(zeroed, 0.0)
                resets[name] = zeroed  # fp32 masters / sharded copies zero them too
        return resets


class OfficialImagenet:
    """ImageNet/core.py: a dropped weight regrown in the same update keeps value and state."""

    def before_update(self, engine: DynamicSparsity) -> dict[str, tuple]:
        return {
            name: (
                engine.masks[name].clone(),
                engine.params[name].detach().clone(),
                [state.clone() for state in engine._optimizer_state(name)],
            )
            for name in engine.sparse_names
        }

    def after_update(
        self,
        engine: DynamicSparsity,
        drop_fraction: float,
        saved: dict[str, tuple],
        resets: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for name, (old_mask, old_weight, old_states) in saved.items():
                kept = old_mask & engine.masks[name]  # active before and after
                weight = engine.params[name]
                weight.copy_(torch.where(kept, old_weight, weight))
                for state, old in zip(engine._optimizer_state(name), old_states, strict=True):
                    state.copy_(torch.where(kept, old, state))
                if name in resets:
                    resets[name] = resets[name] & ~kept
        return resets
