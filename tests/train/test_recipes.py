"""The shipped EDST/DST Ensemble configs reproduce the official FreeTickets schedules exactly.

Each reference below transcribes the official code (VITA-Group/FreeTickets, commit
e5540d1; file and lines cited) as it runs with the README's command lines, and the real
configs/*.yaml, loaded with `load_config`, must give the same LR and drop fraction at every
epoch / step. A few hand-computed values guard the transcriptions themselves.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ft_dist.config import RunConfig, load_config
from ft_dist.sparse import UpdateSchedule
from ft_dist.sparse.choices import official_behaviour
from ft_dist.sparse.update import num_to_drop
from ft_dist.train.edst import drop_decay_period, epoch_plan
from ft_dist.train.optim import learning_rate

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
OFFICIAL_BATCH = 128  # ImageNet: 2 processes x 64; CIFAR: one GPU x 128


def edst_lr(cfg: RunConfig, epoch: int, steps_per_epoch: int, global_batch: int) -> float:
    """LR of the last step of 0-based ``epoch`` as the loop computes it for an EDST run."""
    step = (epoch + 1) * steps_per_epoch - 1
    plan = epoch_plan(epoch, cfg.ensemble.num_members, cfg.ensemble.edst)
    return learning_rate(
        cfg.optim, step, steps_per_epoch, cfg.num_epochs, plan.lr_scale,
        global_batch_size=global_batch,
    )  # fmt: skip


# --------------------------------------------------------------------------- ImageNet EDST
def official_imagenet_edst_lrs(
    epochs: int = 310,
    base: float = 0.1,
    warmup: int = 5,
    milestones: tuple[list[int], list[int], list[int]] | None = None,
) -> list:
    """ImageNet/main.py:352-380 (train_loop): the LR of each 0-based epoch. `lr` is a local
    that keeps its value on epochs that match no branch; milestones are hard-coded there
    (the defaults below, copied from main.py); `milestones` replaces them for shrunk runs."""
    minestone0 = [warmup]
    minestone1, minestone2, minestone3 = milestones or (
        [30, 100, 170, 240],
        [60, 130, 200, 270],
        [90, 160, 230, 300],
    )
    lrs, lr = [], None
    for epoch in range(epochs):
        if epoch < warmup:
            lr = base * (epoch + 1) / (warmup + 1)
        elif epoch in minestone0:
            lr = 0.1
        elif epoch in minestone1:
            lr = 0.01
        elif epoch in minestone2:
            lr = 0.001
        elif epoch in minestone3:
            lr = 0.0001
        lrs.append(lr)
    return lrs


def imagenet_milestones(explo: int, t_re: int, parts: tuple[int, int], members: int):
    """main.py's three milestone lists for other phase lengths: each phase starts at
    0.01, drops to 0.001 after parts[0] epochs and to 0.0001 after parts[0] + parts[1]."""
    starts = [explo + k * t_re for k in range(members)]
    return (
        starts,
        [s + parts[0] for s in starts],
        [s + parts[0] + parts[1] for s in starts],
    )


def test_imagenet_milestones_generalise_main_py() -> None:
    assert imagenet_milestones(30, 70, (30, 30), 4) == (
        [30, 100, 170, 240],
        [60, 130, 200, 270],
        [90, 160, 230, 300],
    )


def test_imagenet_edst_lr_is_the_official_schedule_at_batch_128() -> None:
    cfg = load_config(CONFIGS / "imagenet_edst.yaml")
    official = official_imagenet_edst_lrs()
    assert cfg.num_epochs == len(official) == 310
    ours = [edst_lr(cfg, e, 7, OFFICIAL_BATCH) for e in range(310)]
    assert ours == pytest.approx(official, rel=1e-12)
    # Hand-computed: warm-up (e+1)/6 of 0.1, exploration at 0.1, 30/30/10 per phase.
    assert ours[0] == pytest.approx(0.1 / 6) and ours[4] == pytest.approx(0.5 / 6)
    assert ours[5] == ours[29] == pytest.approx(0.1)
    for start in (30, 100, 170, 240):  # phase starts (start 100+ follow an exploration)
        assert ours[start] == ours[start + 29] == pytest.approx(0.01)
        assert ours[start + 30] == ours[start + 59] == pytest.approx(0.001)
        assert ours[start + 60] == ours[start + 69] == pytest.approx(0.0001)


def test_imagenet_edst_lr_scales_linearly_with_the_global_batch() -> None:
    cfg = load_config(CONFIGS / "imagenet_edst.yaml")
    global_batch = cfg.data.batch_size_per_worker * cfg.train.num_workers
    assert global_batch == 1024 and cfg.optim.base_batch_size == OFFICIAL_BATCH
    assert edst_lr(cfg, 10, 7, global_batch) == pytest.approx(0.8)  # 0.1 x 1024 / 128
    assert edst_lr(cfg, 300, 7, global_batch) == pytest.approx(0.0008)
    # Within a warm-up epoch the LR is constant (per-epoch warm-up, as main.py).
    steps = [learning_rate(cfg.optim, s, 7, 310, 1.0, global_batch_size=1024) for s in range(7)]
    assert steps == [pytest.approx(0.8 / 6)] * 7


def official_cosine_decay(periods: list[tuple[int, int]]) -> list[float]:
    """ImageNet/core.py:35-48 CosineDecay (CosineAnnealingLR, eta_min=0.005), stepped once
    per optimizer step in Masking.step (core.py:397-401) and re-created with a new T_max at
    the given step counts (main.py:230 at the start, main.py:374 after each exploration).
    Entry s is the prune rate an update after s steps uses (main.py:577-580)."""
    rates = [0.5]
    for start, t_max in periods:
        assert len(rates) == start + 1
        sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, t_max, eta_min=0.005)
        for _ in range(t_max):
            sgd.step()  # no gradient: only keeps torch's call-order check quiet
            cosine.step()
            rates.append(sgd.param_groups[0]["lr"])
    return rates


def test_imagenet_edst_drop_fraction_is_the_official_restarted_cosine() -> None:
    cfg = load_config(CONFIGS / "imagenet_edst.yaml")
    steps = 10  # per epoch: the schedule is in units of len(train_loader)
    # main.py:230 CosineDecay(prune_rate, len(train_loader) * 100): exploration + phase 1;
    # main.py:374 CosineDecay(prune_rate, len(train_loader) * 70) at epochs 100, 170, 240.
    periods = [(0, 100 * steps)] + [(e * steps, 70 * steps) for e in (100, 170, 240)]
    official = official_cosine_decay(periods)
    schedule = UpdateSchedule.from_config(cfg.sparsity, global_batch_size=1024)
    members, edst = cfg.ensemble.num_members, cfg.ensemble.edst
    ours = [0.5]
    for step in range(1, 310 * steps + 1):
        period = drop_decay_period(step, steps, members, edst)
        ours.append(schedule.drop_fraction_at(step, period.start, period.length))
    assert ours == pytest.approx(official, rel=1e-9, abs=1e-12)
    # Hand-computed: 0.005 + 0.495 * (1 + cos(pi * k / T)) / 2.
    assert ours[1000] == pytest.approx(0.005)  # end of the first period (epoch 99)
    assert ours[500] == pytest.approx(0.2525)  # half-way through it
    assert ours[1001] == pytest.approx(0.005 + 0.2475 * (1 + math.cos(math.pi / 700)))
    assert ours[1000 + 350] == pytest.approx(0.2525) and ours[3100] == pytest.approx(0.005)
    assert edst.explore_drop_fraction == 0.8


def test_imagenet_edst_update_interval_and_exploration_growth() -> None:
    cfg = load_config(CONFIGS / "imagenet_edst.yaml")
    # ΔT = 4000 steps at batch 128 (README command: --update_frequency 4000 -b 64 x 2).
    assert UpdateSchedule.from_config(cfg.sparsity, OFFICIAL_BATCH).every_steps == 4000
    assert UpdateSchedule.from_config(cfg.sparsity, 1024).every_steps == 500
    # main.py:371-372 explores through Masking.truncate_weights with the run's growth_func.
    assert cfg.ensemble.edst.explore_growth == cfg.sparsity.growth == "gradient"
    assert cfg.optim.no_decay == "norm" and cfg.optim.weight_decay == 1e-4


# --------------------------------------------------------------------------- ImageNet DST Ensemble
def test_imagenet_dst_ensemble_lr_and_drop_fraction() -> None:
    cfg = load_config(CONFIGS / "imagenet_dst_ensemble.yaml")

    def official(epoch: int) -> float:  # main.py:812-832 adjust_learning_rate, multiplier 1
        if epoch < 5:
            return 0.1 * (epoch + 1) / 6
        return 0.1 * 0.1 ** sum(epoch >= m for m in (30, 60, 90))

    lrs = [
        learning_rate(cfg.optim, e * 7 + 3, 7, cfg.num_epochs, global_batch_size=OFFICIAL_BATCH)
        for e in range(cfg.num_epochs)
    ]
    assert lrs == pytest.approx([official(e) for e in range(100)], rel=1e-12)
    # Drop fraction: one cosine 0.5 -> 0.005 over the run (main.py:230, 100 epochs). The
    # period is the one the run plan hands the engine (`DynamicSparsity(decay_period=...)`),
    # not one this test chooses; the engine's `drop_fraction_now` turns it into the value.
    from ft_dist.sparse import DynamicSparsity
    from ft_dist.train.methods import build_plan

    plan = build_plan(cfg, steps_per_epoch=7)
    engine = DynamicSparsity(
        torch.nn.Linear(8, 8), None, cfg.sparsity, global_batch_size=OFFICIAL_BATCH,
        decay_period=plan.decay_period,
    )  # fmt: skip
    total = 100 * 7
    ours = []
    for step in range(total + 1):
        engine.num_steps = step
        ours.append(engine.drop_fraction_now())
    reference = official_cosine_decay([(0, total)])
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-12)
    assert plan.decay_period(350) == (0, total)


# --------------------------------------------------------------------------- CIFAR EDST
def official_cifar_edst_lrs(epochs=450, explo=150, model_num=3, lr=0.1) -> list[float]:
    """main_EDST.py:49-59 (minestone_calculation) and :287-321 with the README's
    --nolrsche (no MultiStepLR): the LR of each 1-based epoch, returned 0-based."""
    individual = (epochs - explo) / model_num
    reset1, epoch_ = [], explo
    for _ in range(model_num):
        reset1.append(epoch_)
        epoch_ = epoch_ + individual
    reset2 = np.ceil(np.array(reset1) + individual / 2)
    reset1 = np.ceil(reset1[1:])
    lrs, current = [], lr
    for epoch in range(1, epochs + 1):
        lrs.append(current)  # trained at this LR; the branches set the next epoch's
        if epoch == explo:
            current = 0.01
        elif epoch in reset2:
            current = 0.001
        elif epoch in reset1:
            current = 0.01
    return lrs


@pytest.mark.parametrize("t_re", [100, 7])  # the published split, and an odd phase length
def test_cifar_edst_lr_is_the_official_schedule(t_re: int) -> None:
    overrides = [f"ensemble.edst.refinement_epochs={t_re}"]
    cfg = load_config(CONFIGS / "cifar100_edst.yaml", overrides)
    official = official_cifar_edst_lrs(epochs=150 + 3 * t_re, explo=150)
    ours = [edst_lr(cfg, e, 5, OFFICIAL_BATCH) for e in range(cfg.num_epochs)]
    assert ours == pytest.approx(official, rel=1e-12)
    if t_re == 100:  # hand-computed: 150 x 0.1, then (50 x 0.01, 50 x 0.001) per phase
        assert ours[149] == 0.1 and ours[150] == ours[199] == pytest.approx(0.01)
        assert ours[200] == ours[249] == pytest.approx(0.001) and ours[250] == pytest.approx(0.01)
        assert ours[449] == pytest.approx(0.001)


def test_cifar_edst_drop_fraction_update_interval_and_exploration() -> None:
    cfg = load_config(CONFIGS / "cifar100_edst.yaml")
    # main_EDST.py runs with --decay-schedule constant, and sparselearning/core.py:119-121
    # calls truncate_weights(self.args.death_rate): 0.5 at every update, every 1000 steps.
    # The engine built from the config's sparsity section, stepped 3000 times, updates at
    # steps 1000, 2000 and 3000 and drops ceil(0.5 n) weights of each sparse layer each time
    # (the loop's own wiring is tested below, with a shorter ΔT).
    from ft_dist.sparse import DynamicSparsity

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10))
    engine = DynamicSparsity(model, None, cfg.sparsity)
    generator = torch.Generator().manual_seed(0)
    dropped_at = {}
    for step in range(1, 3001):
        for param in model.parameters():
            param.grad = torch.randn(param.shape, generator=generator)
        engine.before_optimizer_step()
        engine.after_optimizer_step()
        if engine.last_update and engine.num_updates > len(dropped_at):
            dropped_at[step] = {name: d for name, (d, _, _) in engine.last_update.items()}
    assert list(dropped_at) == [1000, 2000, 3000]
    for dropped in dropped_at.values():
        assert dropped == {n: math.ceil(0.5 * engine.num_active[n]) for n in engine.sparse_names}
    # main_EDST.py:320 mask.truncate_weights(pruning_rate=args.large_death_rate): the run's
    # growth mode (--growth gradient), q = 0.8.
    assert cfg.ensemble.edst.explore_growth == cfg.sparsity.growth == "gradient"
    assert cfg.ensemble.edst.explore_drop_fraction == 0.8
    assert cfg.optim.no_decay == "none"  # main_EDST.py:257: weight decay on every parameter


# --------------------------------------------------------------------------- CIFAR DST Ensemble
def test_cifar_dst_ensemble_lr_is_the_official_multistep() -> None:
    cfg = load_config(CONFIGS / "cifar100_dst_ensemble.yaml")
    epochs = cfg.num_epochs
    # main_DST.py:253-254 and :299: MultiStepLR(milestones=[int(250/2), int(250*3/4)])
    # stepped after each epoch; torch itself is the reference.
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    steps = torch.optim.lr_scheduler.MultiStepLR(sgd, [int(epochs / 2), int(epochs * 3 / 4)])
    official = []
    for _ in range(epochs):
        official.append(sgd.param_groups[0]["lr"])
        sgd.step()
        steps.step()
    ours = [learning_rate(cfg.optim, e * 3, 3, epochs) for e in range(epochs)]
    assert ours == pytest.approx(official, rel=1e-12)
    assert ours[124] == 0.1 and ours[125] == pytest.approx(0.01)  # hand-computed
    assert ours[186] == pytest.approx(0.01) and ours[187] == pytest.approx(0.001)
    assert cfg.train.ticket == "best"  # main_DST.py:304-311 keeps the best-validation epoch


# --------------------------------------------------------------------------- the loop's wiring
# The tests above check the schedule functions against the transcriptions. These run the real
# training loop (`ft_dist.train.loop.train`, one CPU process) on the shipped configs, shrunk
# only in model and data (small-cnn on 256 real MNIST digits, one optimizer step per epoch),
# and record what the loop actually does: the LR in the optimizer at every `step()`, and the
# drop fraction and per-layer dropped counts of every mask update the engine performs.


@pytest.fixture(scope="module")
def one_batch_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 real MNIST training digits (one batch of 32: one optimizer step per epoch), 16
    validation and 16 test digits, written with ft_dist's shard writer."""
    from ft_dist.data.bundled import MNIST_CLASSES, encode_png, load_mnist_5k
    from ft_dist.data.shards import prepare_split_dir, write_split

    images, labels = load_mnist_5k()
    root = tmp_path_factory.mktemp("one_batch_mnist")
    start = 0
    for split, count in (("train", 32), ("val", 16), ("test", 16)):
        pick = slice(start, start + count)
        start += count
        write_split(
            prepare_split_dir(root, split, overwrite=False),
            encode_png(images[pick], labels[pick]),
            classes=MNIST_CLASSES,
            labeled=True,
            shard_size=16,
            info={"recipe": "mnist"},
        )
    return root


def _shrunk(name: str, data: Path, out: Path, *overrides: str) -> RunConfig:
    """A shipped config on 32 MNIST digits: one global batch of 32, one step per epoch."""
    return load_config(
        CONFIGS / name,
        [
            "model.name=small-cnn",
            f"data.root={data}",
            "data.recipe=mnist",
            "data.batch_size_per_worker=32",
            "data.loader_workers=0",
            "data.shuffle_buffer=0",
            "data.verify=size",
            "train.num_workers=1",
            "train.bf16=false",
            "train.channels_last=false",
            "train.checkpoint_every_epochs=100000",
            "train.log_every_steps=100000",
            f"train.output_dir={out}",
            "ray.use_gpu=false",
            "tracking.wandb=disabled",
            *overrides,
        ],
    )


def _record_loop(cfg: RunConfig, monkeypatch: pytest.MonkeyPatch) -> tuple[list, list]:
    """Run the loop; returns ([LR at each optimizer step], [(step, f, dropped, active)])."""
    from ft_dist.layout import run_dir
    from ft_dist.sparse.dynamic import DynamicSparsity
    from ft_dist.train.loop import train
    from ft_dist.train.session import LocalSession
    from tests.train.conftest import NullTracker

    lrs: list[float] = []
    updates: list[tuple[int, float, dict[str, int], dict[str, int]]] = []
    sgd_step, engine_update = torch.optim.SGD.step, DynamicSparsity._update

    def spy_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return sgd_step(self, *args, **kwargs)

    def spy_update(self, drop_fraction, *args, **kwargs):
        resets = engine_update(self, drop_fraction, *args, **kwargs)
        dropped = {name: d for name, (d, _, _) in self.last_update.items()}
        updates.append((self.num_steps, drop_fraction, dropped, dict(self.num_active)))
        return resets

    monkeypatch.setattr(torch.optim.SGD, "step", spy_step)
    monkeypatch.setattr(DynamicSparsity, "_update", spy_update)
    with LocalSession(run_dir(cfg.train), device="cpu") as session:
        train(cfg, session, NullTracker())
    return lrs, updates


def _assert_updates(updates: list, expected: list[tuple[int, float]], official: bool) -> None:
    """The engine updated at exactly the expected steps with the expected drop fractions,
    and dropped exactly the drop count of every sparse layer each time (``official``: the
    official code's ceil(f · n_l), as under sparsity.compat; else ours)."""
    assert [step for step, _, _, _ in updates] == [step for step, _ in expected]
    assert [f for _, f, _, _ in updates] == pytest.approx([f for _, f in expected], rel=1e-9)
    for _, fraction, dropped, active in updates:
        assert dropped, "an update touched no layer"
        for name, count in dropped.items():
            expected_count = num_to_drop(active[name], fraction, official=official)
            assert count == expected_count, (name, fraction)


@pytest.mark.slow
def test_loop_runs_the_official_cifar_edst_schedules(
    one_batch_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cifar100_edst.yaml with t_ex = 4 and t_re = 7 (an odd phase: 4 + 3 epochs at 0.01 /
    # 0.001) and ΔT = 2 steps, so its constant 0.5 and the q = 0.8 explorations show.
    cfg = _shrunk(
        "cifar100_edst.yaml",
        one_batch_mnist,
        tmp_path,
        "ensemble.edst.exploration_epochs=4",
        "ensemble.edst.refinement_epochs=7",
        "sparsity.update_every_steps=2",
    )
    lrs, updates = _record_loop(cfg, monkeypatch)
    # main_EDST.py does not scale the LR with the batch, and neither does this config.
    assert cfg.optim.base_batch_size is None
    assert lrs == pytest.approx(official_cifar_edst_lrs(epochs=25, explo=4), rel=1e-12)
    # core.py:109-122: truncate_weights(death_rate = 0.5) every ΔT steps; main_EDST.py:320:
    # after phases 1 and 2 (epochs 11 and 18, one step each) one update with q = 0.8.
    expected = []
    for step in range(1, 26):
        if step % 2 == 0:
            expected.append((step, 0.5))
        if step in (11, 18):
            expected.append((step, 0.8))
    _assert_updates(updates, expected, official=official_behaviour(cfg.sparsity.compat) is not None)


@pytest.mark.slow
def test_loop_runs_the_official_imagenet_edst_schedules(
    one_batch_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # imagenet_edst.yaml shrunk to t_ex = 4 (2 warm-up epochs), M = 4 phases of t_re = 5
    # split 2 / 2 / 1 (as 30 / 30 / 10), ΔT = 1 step (32 samples): every step's drop
    # fraction of every restarted cosine shows.
    cfg = _shrunk(
        "imagenet_edst.yaml",
        one_batch_mnist,
        tmp_path,
        "ensemble.edst.exploration_epochs=4",
        "ensemble.edst.refinement_epochs=5",
        "ensemble.edst.refinement_lr_epochs=[2,2,1]",
        "optim.warmup_epochs=2",
        "sparsity.update_every_samples=32",
    )
    lrs, updates = _record_loop(cfg, monkeypatch)
    milestones = imagenet_milestones(4, 5, (2, 2), 4)
    official = official_imagenet_edst_lrs(24, warmup=2, milestones=milestones)
    scale = 32 / OFFICIAL_BATCH  # linear LR scaling from the official global batch 128
    assert lrs == pytest.approx([lr * scale for lr in official], rel=1e-12)
    # CosineDecay over exploration + phase 1 from the start, re-created with one phase's
    # length after each exploration (main.py:230, 371-374); one step per epoch here.
    cosine = official_cosine_decay([(0, 9)] + [(e, 5) for e in (9, 14, 19)])
    expected = []
    for step in range(1, 25):
        expected.append((step, cosine[step]))
        if step in (9, 14, 19):  # main.py:371-372: an exploration after phases 1-3
            expected.append((step, 0.8))
    _assert_updates(updates, expected, official=official_behaviour(cfg.sparsity.compat) is not None)
