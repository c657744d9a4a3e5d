"""A resume continues the run it resumes: the run's definition recorded at its first start,
a changed key refused in one line unless allowed (and the allowed change recorded), the
global batch kept on another number of workers, ZeRO > 0 held to its world size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ft_dist.layout import (
    checkpoint_dir,
    checkpoint_dirs,
    checkpoints_dir,
    config_path,
    definition_path,
    run_dir,
)
from ft_dist.train.checkpoint import META_FILE
from ft_dist.train.definition import (
    GLOBAL_BATCH,
    ResumeRefused,
    read_record,
    run_definition,
    settle_resume,
)
from ft_dist.train.loop import train
from ft_dist.train.session import LocalSession
from tests.gloo_workers import run_workers
from tests.train.conftest import NullTracker, tiny_config
from tests.train.test_loop import resume_copy


def fake_checkpoint(cfg, step: int, **meta) -> Path:
    """A checkpoint directory holding only meta.json (all the definition check reads)."""
    path = checkpoint_dir(checkpoints_dir(run_dir(cfg.train)), step)
    path.mkdir(parents=True)
    (path / META_FILE).write_text(json.dumps({"step": step, **meta}))
    return path


def test_the_definition_holds_what_trains_and_not_where_or_how_fast(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", train={"num_workers": 2})
    definition = run_definition(cfg, world_size=2)
    assert definition["optim.lr"] == 0.05 and definition["sparsity.growth"] == "gradient"
    assert definition["sparsity.update_every_steps"] == 3 and definition["train.seed"] == 0
    assert definition["data.batch_size_per_worker"] == 32 and definition["train.epochs"] == 2
    assert definition[GLOBAL_BATCH] == 64  # 2 workers x 32, though the config left it unset
    assert definition["ensemble.method"] == "single" and definition["model.name"] == "small-cnn"
    operational = ("data.root", "data.loader_workers", "train.num_workers", "train.output_dir")
    operational += ("train.checkpoint_every_steps", "train.log_every_steps", "train.run_name")
    assert not set(operational) & definition.keys()
    assert not [key for key in definition if key.startswith(("ray.", "tracking."))]
    json.dumps(definition)  # plain JSON values


def test_a_fresh_start_records_the_definition(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    settled = settle_resume(cfg, run_dir(cfg.train), 1, None)
    assert settled.cfg == cfg and settled.notes == []
    assert read_record(run_dir(cfg.train)) == {
        "definition": run_definition(cfg, 1),
        "changes": [],
    }


def test_a_changed_key_is_refused_in_one_line_naming_old_and_new(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    run = run_dir(cfg.train)
    settle_resume(cfg, run, 1, None)
    checkpoint = fake_checkpoint(cfg, 4, world_size=1)
    before = definition_path(run).read_bytes()
    changed = tiny_config(
        tmp_path / "data",
        tmp_path / "runs",
        optim={"lr": 0.1},
        sparsity={"growth": "random"},
        train={"seed": 3, "checkpoint_every_steps": 2, "log_every_steps": 1},  # 2 operational
    )
    with pytest.raises(ResumeRefused) as refused:
        settle_resume(changed, run, 1, checkpoint)
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        f"{run} (checkpoint step 4) was started with other values: optim.lr: 0.05 -> 0.1, "
        "sparsity.growth: gradient -> random, train.seed: 0 -> 3; resume with the run's own "
        "values, pass --allow-change optim.lr --allow-change sparsity.growth --allow-change "
        "train.seed to `ft-dist train` to change them (recorded in the run), or start afresh "
        "with a new train.run_name"
    )
    # Allowing some of the keys is not enough; the refusal names only the others.
    with pytest.raises(ResumeRefused, match=r"values: train\.seed: 0 -> 3; "):
        settle_resume(changed, run, 1, checkpoint, ["optim.lr", "sparsity.growth"])
    assert definition_path(run).read_bytes() == before  # a refusal writes nothing


def test_an_allowed_change_is_recorded_and_needs_no_flag_again(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    run = run_dir(cfg.train)
    settle_resume(cfg, run, 1, None)
    checkpoint = fake_checkpoint(cfg, 4, world_size=1)
    changed = tiny_config(tmp_path / "data", tmp_path / "runs", optim={"lr": 0.1})
    settled = settle_resume(changed, run, 1, checkpoint, ["optim.lr"])
    assert settled.cfg == changed
    [note] = settled.notes
    assert "optim.lr: 0.05 -> 0.1 (allowed; recorded in" in note
    record = read_record(run)
    assert record["definition"]["optim.lr"] == 0.1
    [change] = record["changes"]
    assert (change["key"], change["old"], change["new"], change["from_step"]) == (
        "optim.lr",
        0.05,
        0.1,
        4,
    )
    assert settled.meta()["definition_changes"] == record["changes"]  # into checkpoints
    # The same values again (the run stopped before its next checkpoint): no flag needed.
    assert settle_resume(changed, run, 1, checkpoint).notes == []
    # Going back to the old value is another change.
    with pytest.raises(ResumeRefused, match=r"optim\.lr: 0\.1 -> 0\.05"):
        settle_resume(cfg, run, 1, checkpoint)


def test_a_checkpoint_without_the_run_record_carries_the_definition(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    checkpoint = fake_checkpoint(cfg, 4, world_size=1, definition=run_definition(cfg, 1))
    changed = tiny_config(tmp_path / "data", tmp_path / "runs", optim={"lr": 0.1})
    with pytest.raises(ResumeRefused, match=r"optim\.lr: 0\.05 -> 0\.1"):
        settle_resume(changed, run_dir(cfg.train), 1, checkpoint)
    # A checkpoint of a version that recorded no definition: the run's values from now on.
    legacy = tiny_config(tmp_path / "data", tmp_path / "legacy")
    old = fake_checkpoint(legacy, 4, world_size=1)
    assert settle_resume(legacy, run_dir(legacy.train), 1, old).cfg == legacy
    assert read_record(run_dir(legacy.train))["definition"] == run_definition(legacy, 1)


def test_unknown_allowed_keys_are_refused(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    with pytest.raises(ResumeRefused, match=r"optim\.lrr \(did you mean optim\.lr\?\)"):
        settle_resume(cfg, run_dir(cfg.train), 1, None, ["optim.lrr"])
    with pytest.raises(
        ResumeRefused,
        match=r"train\.num_workers \(operational: it never blocks a resume\): not a key",
    ):
        settle_resume(cfg, run_dir(cfg.train), 1, None, ["train.num_workers"])


def test_another_number_of_workers_keeps_the_global_batch(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", train={"num_workers": 2})
    run = run_dir(cfg.train)
    settle_resume(cfg, run, 2, None)
    checkpoint = fake_checkpoint(cfg, 4, world_size=2)
    one = cfg.model_copy(update={"train": cfg.train.model_copy(update={"num_workers": 1})})
    settled = settle_resume(one, run, 1, checkpoint)
    assert settled.cfg.train.global_batch_size == 64
    assert settled.record["definition"] == run_definition(cfg, 2)  # nothing else changed
    [note] = settled.notes
    assert note.endswith(
        "keeping the run's global batch of 64 on 1 worker(s) (train.global_batch_size=64; it "
        "was written on 2): the accumulation makes up for the workers"
    )
    # 3 workers x 32 cannot make 64: one line.
    with pytest.raises(ResumeRefused) as refused:
        settle_resume(one, run, 3, checkpoint)
    assert str(refused.value) == (
        f"cannot resume {run} on 3 worker(s) with its global batch of 64 (written on 2): 64 "
        "is not a multiple of data.batch_size_per_worker=32 x 3 workers = 96; choose "
        "train.num_workers so that it divides"
    )
    # A changed batch per worker is named as the change it is (no word about dividing).
    bigger = one.model_copy(
        update={"data": one.data.model_copy(update={"batch_size_per_worker": 48})}
    )
    with pytest.raises(ResumeRefused, match=r"values: data\.batch_size_per_worker: 32 -> 48; "):
        settle_resume(bigger, run, 1, checkpoint)
    # A global batch set on purpose is a change of the run, allowed only when asked for.
    explicit = one.model_copy(
        update={"train": one.train.model_copy(update={"global_batch_size": 32})}
    )
    with pytest.raises(ResumeRefused, match=r"train\.global_batch_size: 64 -> 32"):
        settle_resume(explicit, run, 1, checkpoint)
    # So is the smaller batch of today's resume, when allowed.
    halved = settle_resume(one, run, 1, checkpoint, [GLOBAL_BATCH])
    assert halved.cfg.train.global_batch_size is None
    assert halved.record["definition"][GLOBAL_BATCH] == 32


def test_zero_partitions_refuse_another_world_size_in_one_line(tmp_path: Path) -> None:
    zero = {"strategy": "deepspeed", "zero_stage": 1, "num_workers": 2}
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", train=zero)
    meta = {"strategy": "deepspeed", "zero_stage": 1, "per_rank_partitions": True}
    checkpoint = fake_checkpoint(cfg, 6, world_size=2, **meta)
    run = run_dir(cfg.train)
    with pytest.raises(ResumeRefused) as refused:
        settle_resume(cfg, run, 1, checkpoint)
    assert str(refused.value) == (
        f"cannot resume {run} on 1 worker(s): its checkpoint (step 6) was written on 2 by "
        "train.strategy=deepspeed with train.zero_stage=1, whose state is partitioned per "
        "rank (the strategy needs train.zero_stage=0 (or strategy=ddp): ZeRO checkpoints are "
        "partitioned per rank and cannot resume on another world size); resume with "
        "train.num_workers=2"
    )
    assert settle_resume(cfg, run, 2, checkpoint).cfg == cfg


# --------------------------------------------------------------------------- training
def run_allowing(cfg, allow_change=()) -> tuple[dict, NullTracker]:
    tracker = NullTracker()
    with LocalSession(run_dir(cfg.train), device="cpu") as session:
        summary = train(cfg, session, tracker, allow_change=allow_change)
    return summary, tracker


def lrs_after(tracker: NullTracker, step: int) -> dict[int, float]:
    return {s: m["train/lr"] for s, m in tracker.logged if "train/lr" in m and s > step}


def newest_meta(cfg) -> dict:
    newest = checkpoint_dirs(checkpoints_dir(run_dir(cfg.train)))[-1]
    return json.loads((newest / META_FILE).read_text())


@pytest.mark.slow
def test_a_changed_lr_is_refused_before_training_and_resumes_when_allowed(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    train_section = {"epochs": 1, "checkpoint_every_steps": 4, "log_every_steps": 1}
    cfg = tiny_config(tiny_mnist, tmp_path / "a", train=train_section)
    _, reference = run_allowing(cfg)
    assert newest_meta(cfg)["definition"] == run_definition(cfg, 1)
    copy = resume_copy(cfg, 4, tmp_path / "b")  # the checkpoint alone: its meta knows the run
    changed = copy.model_copy(update={"optim": copy.optim.model_copy(update={"lr": 0.1})})
    with pytest.raises(ResumeRefused) as refused:
        run_allowing(changed)
    assert "optim.lr: 0.05 -> 0.1; " in str(refused.value)
    assert "--allow-change optim.lr to `ft-dist train`" in str(refused.value)
    assert not config_path(run_dir(copy.train)).exists()  # refused before anything ran
    assert not definition_path(run_dir(copy.train)).exists()

    summary, tracker = run_allowing(changed, ["optim.lr"])
    assert summary["steps"] == 8
    assert any("optim.lr: 0.05 -> 0.1 (allowed; recorded in" in n for n in tracker.notes)
    assert lrs_after(tracker, 4) == {s: 2 * lr for s, lr in lrs_after(reference, 4).items()}
    meta = newest_meta(changed)
    assert meta["definition"]["optim.lr"] == 0.1
    assert [c["key"] for c in meta["definition_changes"]] == ["optim.lr"]
    assert read_record(run_dir(copy.train))["changes"] == meta["definition_changes"]


def _record_run(rank: int, world_size: int, cfg) -> None:
    """Train ``cfg`` as one rank of a gloo group; rank 0 keeps what it logged."""
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    _record_here(cfg, rank)


def _record_here(cfg, rank: int = 0) -> None:
    summary, tracker = run_allowing(cfg)
    if rank == 0:
        logged = [[step, metrics.get("train/lr")] for step, metrics in tracker.logged]
        record = {"summary": summary, "logged": logged, "notes": tracker.notes}
        (run_dir(cfg.train) / "test_run.json").write_text(json.dumps(record))


def recorded_run(cfg) -> dict:
    return json.loads((run_dir(cfg.train) / "test_run.json").read_text())


@pytest.mark.dist
@pytest.mark.slow
def test_two_ranks_resumed_on_one_keep_the_global_batch_lr_and_steps(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    # Not elastic, no train.global_batch_size: 2 ranks x 32 = 64, 4 steps per epoch. The LR
    # scales with the global batch and follows a cosine, so a halved batch would show.
    train_section = {"checkpoint_every_steps": 2, "keep_checkpoints": 10, "log_every_steps": 1}
    optim = {"base_batch_size": 32, "schedule": "cosine"}
    cfg = tiny_config(tiny_mnist, tmp_path / "a", train=train_section, optim=optim)
    run_workers(_record_run, 2, cfg)
    reference = recorded_run(cfg)
    assert reference["summary"]["steps"] == 8 and reference["summary"]["world_size"] == 2
    resumed = resume_copy(cfg, 2, tmp_path / "one")  # mid-epoch 0
    _record_here(resumed)  # one rank, this process
    one = recorded_run(resumed)
    summary = one["summary"]
    assert summary["world_size"] == 1 and summary["steps"] == 8
    assert summary["images_seen"] == 8 * 64
    assert any("keeping the run's global batch of 64 on 1 worker(s)" in n for n in one["notes"])
    # The LR of every step, and the steps logged (W&B's x-axis): those of the 2-rank run
    # after the checkpoint, in order, none repeated or missing.
    after = [entry for entry in reference["logged"] if entry[0] > 2]
    assert one["logged"] == after
    assert [step for step, lr in after if lr is not None] == [3, 4, 5, 6, 7, 8]
    saved = yaml.safe_load(config_path(run_dir(resumed.train)).read_text())
    assert saved["train"]["global_batch_size"] == 64  # the run's config says what it trained
