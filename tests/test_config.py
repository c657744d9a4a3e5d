"""YAML → RunConfig, dotted overrides, errors that name the key, and the saved round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ft_dist.config import apply_overrides, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


BASE = """
model: {name: small-cnn}
data: {root: /data/mnist, batch_size_per_worker: 64}
sparsity: {density: 0.2, update_every_steps: 50}
optim: {name: sgd, lr: 0.1}
train: {epochs: 3, run_name: demo}
"""


def test_yaml_and_overrides_become_typed_values(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, BASE),
        ["optim.lr=0.05", "optim.milestones=[0.3, 0.6]", "train.bf16=true", "model.num_classes=10"],
    )
    assert cfg.optim.lr == 0.05 and cfg.optim.milestones == (0.3, 0.6)
    assert cfg.train.bf16 is True and cfg.model.num_classes == 10
    assert cfg.sparsity.update_every_steps == 50 and cfg.data.batch_size_per_worker == 64
    assert cfg.num_epochs == 3
    assert cfg.ray.max_failures >= 0 and cfg.tracking.project  # defaults filled in


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sparsity.density=1.5", r"sparsity\.density: .*less than or equal to 1"),
        ("sparsity.density=0", r"sparsity\.density: .*greater than 0"),
        (
            "sparsity.update_every_steps=-5",
            r"sparsity\.update_every_steps: .*greater than or equal to 1",
        ),
        (
            "optim.name=adam",
            r"optim\.name: .*'adam' is unknown; choose one of sgd, sgd-nesterov, adamw",
        ),
        ("optim.lrr=0.1", r"optim\.lrr: unknown key; allowed keys of optim: name, lr, "),
        ("train.zero_stage=3", r"train\.zero_stage: .*0, 1 or 2"),
        ("train.epochs=many", r"train\.epochs: .*valid integer"),
        ("optim.milestones=[0.8, 0.4]", r"optim\.milestones: .*increasing"),
        ("train.run_name=a/b", r"train\.run_name: .*directory name"),
        ("trian.epochs=3", r"unknown section 'trian'; allowed: model, data, "),
    ],
)
def test_bad_values_name_the_dotted_key_and_what_is_allowed(
    tmp_path: Path, override: str, expected: str
) -> None:
    with pytest.raises(ValueError, match=expected) as error:
        load_config(write(tmp_path, BASE), [override])
    if not override.startswith("trian"):
        assert str(error.value).startswith(str(tmp_path / "run.yaml"))


def test_cross_section_rules(tmp_path: Path) -> None:
    edst = "ensemble: {method: edst, num_members: 3, edst: {exploration_epochs: 2, refinement_epochs: 4}}\n"
    with pytest.raises(ValueError, match="train.epochs=3 disagrees .* = 14"):
        load_config(write(tmp_path, BASE + edst))
    cfg = load_config(write(tmp_path, BASE.replace("epochs: 3, ", "") + edst))
    assert cfg.num_epochs == 14
    # The saved EDST config records the epochs it trains and loads back unchanged.
    saved = save_config(cfg, tmp_path / "saved" / "config.yaml")
    reloaded = load_config(saved)
    assert reloaded.train.epochs == 14 and reloaded.num_epochs == 14
    assert reloaded.ensemble == cfg.ensemble and reloaded.sparsity == cfg.sparsity
    with pytest.raises(ValueError, match="needs dynamic sparse training"):
        load_config(write(tmp_path, BASE.replace("epochs: 3, ", "") + edst), ["sparsity.density=1"])
    with pytest.raises(
        ValueError,
        match="growth=momentum reads the full gradient at every step, which train.strategy=deepspeed",
    ):
        load_config(write(tmp_path, BASE), ["train.strategy=deepspeed", "sparsity.growth=momentum"])


def test_file_and_override_syntax_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed"))
    with pytest.raises(ValueError, match="data: required but missing"):
        load_config(write(tmp_path, "model: {name: small-cnn}\n"))
    with pytest.raises(ValueError, match="must look like section.key=value"):
        apply_overrides({}, ["optim.lr"])


def test_saved_config_loads_back_identically(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, BASE),
        ["sparsity.update_every_steps=null", "sparsity.update_every_samples=4096"],
    )
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert yaml.safe_load(saved.read_text())["optim"]["lr"] == 0.1
    assert load_config(saved) == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_config_file_is_refused_even_with_overrides(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=r"run.yaml is empty: write at least the data section"):
        load_config(path, ["data.root=/data/mnist"])  # would train WRN-28-10 defaults


def test_the_old_dst_ensemble_name_still_loads_with_a_note(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        BASE + "ensemble:\n  method: pdst\n  num_members: 2\n  pdst: {max_concurrent_members: 1}\n",
    )
    with pytest.warns(
        FutureWarning, match="ensemble.method=pdst is now called ensemble.method=dst_ensemble"
    ):
        cfg = load_config(config)
    assert cfg.ensemble.method == "dst_ensemble"
    assert cfg.ensemble.dst_ensemble.max_concurrent_members == 1
    both = write(tmp_path, BASE + "ensemble:\n  pdst: {}\n  dst_ensemble: {}\n")
    with pytest.raises(ValueError, match="ensemble.pdst is the old name of ensemble.dst_ensemble"):
        load_config(both)
