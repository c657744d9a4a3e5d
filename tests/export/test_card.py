"""README.md of an export: a Hugging Face model card that huggingface_hub parses, with the
run's `ft-dist evaluate` metrics as its model-index, and how to build every model family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from ft_dist.ensemble.run_eval import EvalOptions, evaluate_run
from ft_dist.export import export_run
from ft_dist.export.card import BUILD_SNIPPETS, build_snippet
from ft_dist.models import MODEL_FAMILIES
from tests.export.test_export import NUM_MEMBERS, mnist_root, write_run  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def evaluated(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    base = tmp_path_factory.mktemp("card")
    write_run(base / "run", mnist_root)
    config = yaml.safe_load((base / "run" / "config.yaml").read_text())
    config["ensemble"] = {"method": "edst", "num_members": NUM_MEMBERS}
    (base / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    written = evaluate_run(base / "run", EvalOptions(ood="gaussian", track=False))
    export_run(base / "run", base / "out", program=False)
    return base / "out", json.loads(written["json"].read_text())


def test_huggingface_hub_parses_the_card_and_its_results(evaluated) -> None:
    out, report = evaluated
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "pytorch" and "EDST" in card.data.tags
    results = {r.metric_type: r for r in card.data.eval_results}
    test, ood = report["ensemble"]["test"], report["ensemble"]["ood"]
    for key in ("accuracy", "nll", "ece", "brier"):
        assert results[key].metric_value == pytest.approx(test[key], rel=1e-12)
        assert results[key].dataset_split == "test"
    assert results["auroc_max_prob"].metric_value == pytest.approx(ood["auroc_max_prob"])
    text = card.text
    assert f"| members | {NUM_MEMBERS} |" in text and "0.2, 0.2, 0.2" in text
    assert f"{report['flops']['inference_flops']:.4g}" in text  # the same FLOPs as evaluate's
    assert "OoD AUROC (entropy)" in text and "gaussian" in text
    assert "build_model('small-cnn', num_classes=10, in_channels=1, image_size=28)" in text
    assert "method: edst" in text  # the run's config.yaml
    assert "member_01.safetensors" in text and "ensemble.pt2" in text


def test_without_an_evaluation_the_card_says_how_to_get_one(evaluated, tmp_path: Path) -> None:
    out, report = evaluated
    run = Path(report["run_dir"])
    export_run(run, tmp_path / "out", program=False, report=None)  # the default report: used
    assert ModelCard.load(tmp_path / "out" / "README.md").data.eval_results
    (run / "eval" / "report.json").rename(tmp_path / "report.json")
    try:
        export_run(run, tmp_path / "bare", program=False)
        card = ModelCard.load(tmp_path / "bare" / "README.md")
        assert card.data.eval_results is None and "Not evaluated" in card.text
        with pytest.raises(FileNotFoundError, match="--report .*nope.json"):
            export_run(run, tmp_path / "x", report=tmp_path / "nope.json")
        export_run(run, tmp_path / "given", program=False, report=tmp_path / "report.json")
        assert ModelCard.load(tmp_path / "given" / "README.md").data.eval_results
    finally:
        (tmp_path / "report.json").rename(run / "eval" / "report.json")


def test_every_model_family_has_a_build_snippet() -> None:
    assert {family.name for family in MODEL_FAMILIES} == set(BUILD_SNIPPETS)
    meta = {"num_classes": 5, "in_channels": 3, "image_size": 32}
    timm = build_snippet({**meta, "model": "timm:resnet18"})
    assert "timm.create_model('resnet18', pretrained=False, num_classes=5, in_chans=3)" in timm
    vit = build_snippet({**meta, "model": "timm:vit_tiny_patch16_224"})
    assert "in_chans=3, img_size=32)" in vit
    tv = build_snippet({**meta, "model": "torchvision:resnet18", "model_kwargs": {"width": 2}})
    assert "get_model('resnet18', weights=None, num_classes=5, width=2)" in tv
    user = build_snippet({**meta, "model": "/home/u/nets.py:make"})
    assert "from nets import make" in user
