"""Mean training loss and throughput between two log lines, without syncing every step."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class Meter:
    """Mean training loss and images/s since the last read, not counting excluded time
    (checkpoints); the loss stays on the device until read, so steps never sync for it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.steps, self.images, self.skipped = 0, 0, 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum += loss.detach().float()
        self.steps, self.images = self.steps + 1, self.images + images

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.skipped += time.perf_counter() - start

    def read(self) -> tuple[torch.Tensor, float, float]:
        """(mean loss, images/s, training seconds) since the last read; then reset."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = max(time.perf_counter() - self.start - self.skipped, 1e-9)
        values = (self.loss_sum / max(self.steps, 1), self.images / seconds, seconds)
        self._reset()
        return values
