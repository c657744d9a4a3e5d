"""When a DST update happens and with what drop fraction (SPEC §4, "Schedules").

A pure value object: it knows nothing of models or optimizers, so the trainer, the FLOPs
accounting and the tests can all ask it the same questions. The cosine drop fraction is
a pure function of the step and of the decay period the caller says the step is in, so a
resumed run needs no schedule state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ft_dist.sparse.config import SparsityConfig


@dataclass(frozen=True)
class UpdateSchedule:
    every_steps: int | None  # ΔT; None = static masks
    drop_fraction: float  # f (constant) or f0 (cosine)
    kind: str = "constant"
    stop_step: int | None = None
    drop_fraction_min: float = 0.0  # cosine floor at the end of each decay period

    @classmethod
    def from_config(
        cls, config: SparsityConfig, global_batch_size: int | None = None
    ) -> UpdateSchedule:
        if not config.is_dynamic:
            return cls(None, 0.0)
        every = config.update_every_steps
        if config.update_every_samples is not None:
            if not global_batch_size:
                raise ValueError(
                    "sparsity.update_every_samples needs the global batch size: pass "
                    "global_batch_size= to DynamicSparsity, or use update_every_steps"
                )
            every = max(1, round(config.update_every_samples / global_batch_size))
        if every is None:
            raise ValueError("sparsity: set update_every_steps or update_every_samples")
        return cls(
            every,
            config.drop_fraction,
            config.drop_schedule,
            config.stop_step,
            config.drop_fraction_min,
        )

    def is_update_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based: the count of steps taken) ends with an update."""
        if self.every_steps is None or step <= 0 or step % self.every_steps:
            return False
        return self.stop_step is None or step <= self.stop_step

    def drop_fraction_at(
        self, step: int, period_start: int = 0, period_length: int | None = None
    ) -> float:
        """Drop fraction of an update after ``step`` optimizer steps (1-based count).

        Cosine decays from f0 to the floor over one decay period and restarts at f0 in the
        next: ``f = f_min + (f0 - f_min) · ½(1 + cos(π · min(1, (step - start) / length)))``.
        This is ``CosineAnnealingLR(T_max=length, eta_min=f_min)`` stepped once per
        optimizer step since the period began, as the official ImageNet code does
        (ImageNet/core.py CosineDecay, Masking.step). The period is
        [``period_start``, ``period_start + period_length``] when given (the trainer: the
        whole run, or one EDST decay period, see ``ft_dist.train.edst.drop_decay_period``),
        else [0, ``stop_step``] (RigL).
        """
        if self.kind == "constant":
            return self.drop_fraction
        if period_length is None:
            if self.stop_step is None:
                raise ValueError(
                    "sparsity.drop_schedule=cosine without sparsity.stop_step decays over the "
                    "run: pass period_start/period_length (the trainer uses "
                    "ft_dist.train.edst.drop_decay_period), or set sparsity.stop_step"
                )
            period_start, period_length = 0, self.stop_step
        progress = min(1.0, max(0, step - period_start) / max(period_length, 1))
        span = self.drop_fraction - self.drop_fraction_min
        return self.drop_fraction_min + span * 0.5 * (1.0 + math.cos(math.pi * progress))

    def num_updates(self, total_steps: int) -> int:
        """How many regular updates a run of ``total_steps`` optimizer steps performs."""
        if self.every_steps is None:
            return 0
        last = total_steps if self.stop_step is None else min(total_steps, self.stop_step)
        return last // self.every_steps
