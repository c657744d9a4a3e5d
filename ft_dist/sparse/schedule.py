"""When a DST update happens and with what drop fraction (SPEC §4, "Schedules").

A pure value object: it knows nothing of models or optimizers, so the trainer, the FLOPs
accounting and the tests can all ask it the same questions.
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
        return cls(every, config.drop_fraction, config.drop_schedule, config.stop_step)

    def is_update_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based: the count of steps taken) ends with an update."""
        if self.every_steps is None or step <= 0 or step % self.every_steps:
            return False
        return self.stop_step is None or step <= self.stop_step

    def drop_fraction_at(self, step: int) -> float:
        if self.kind == "constant" or self.stop_step is None:
            return self.drop_fraction
        progress = min(step, self.stop_step) / max(self.stop_step, 1)
        return self.drop_fraction * 0.5 * (1.0 + math.cos(math.pi * progress))

    def num_updates(self, total_steps: int) -> int:
        """How many regular updates a run of ``total_steps`` optimizer steps performs."""
        if self.every_steps is None:
            return 0
        last = total_steps if self.stop_step is None else min(total_steps, self.stop_step)
        return last // self.every_steps
