"""The loop's events: every subscriber hears them in the documented order, a subscriber
given to `train` runs after the standard ones, and a replaced model reaches them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.layout import run_dir
from ft_dist.train.events import Callback, Events
from ft_dist.train.loop import replace_model, train
from ft_dist.train.session import LocalSession
from tests.train.conftest import NullTracker, tiny_config


class Recorder(Callback):
    def __init__(self) -> None:
        self.heard: list[str] = []

    def on_epoch_start(self, ctx, epoch, actions) -> None:
        self.heard.append(f"epoch_start {epoch}")

    def on_step_start(self, ctx) -> None:
        self.heard.append("step_start")

    def on_before_optimizer_step(self, ctx) -> None:
        self.heard.append("before_optimizer_step")

    def on_after_optimizer_step(self, ctx) -> None:
        self.heard.append("after_optimizer_step")

    def on_after_step(self, ctx, loss) -> None:
        self.heard.append("after_step")

    def on_log(self, ctx, metrics) -> None:
        self.heard.append("log loss" if "train/loss" in metrics else "log epoch")

    def on_before_checkpoint(self, ctx, lr) -> None:
        self.heard.append("before_checkpoint")

    def on_epoch_end(self, ctx, epoch, actions, metrics) -> None:
        # The standard subscribers ran first: validation's accuracy is in the metrics.
        assert "val/accuracy" in metrics
        self.heard.append(f"epoch_end {epoch}")

    def on_checkpoint(self, ctx, path) -> None:
        self.heard.append("checkpoint")

    def on_finish(self, ctx, summary) -> None:
        self.heard.append("finish")


@pytest.mark.slow
def test_a_subscriber_hears_every_event_in_order(tiny_mnist: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        tiny_mnist,
        tmp_path,
        train={"epochs": 1, "log_every_steps": 4, "checkpoint_every_steps": 6},
    )
    recorder = Recorder()
    with LocalSession(run_dir(cfg.train), device="cpu") as session:
        train(cfg, session, NullTracker(), callbacks=[recorder])
    step = ["step_start", "before_optimizer_step", "after_optimizer_step", "after_step"]
    expected = (
        ["epoch_start 0"]
        + step * 4
        + ["log loss"]
        + step * 2
        + ["before_checkpoint", "checkpoint"]
        + step * 2
        + ["log loss", "epoch_end 0", "log epoch", "checkpoint", "finish"]
    )
    assert recorder.heard == expected


def test_replace_model_tells_every_subscriber() -> None:
    class Ctx:
        strategy = "old"

    class Seen(Callback):
        def on_model_replaced(self, ctx, old) -> None:
            self.pair = (old, ctx.strategy)

    first, second = Seen(), Seen()
    ctx = Ctx()
    replace_model(ctx, Events([first, second]), "new")
    assert ctx.strategy == "new"
    assert first.pair == second.pair == ("old", "new")


def test_an_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="no loop event 'step_begin'"):
        Events([]).fire("step_begin", None)
