"""Evaluation and report on tiny real tickets and in-memory data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ft_dist.ensemble import metrics
from ft_dist.ensemble.evaluate import Normalization, evaluate_tickets, predict
from ft_dist.ensemble.report import summary_metrics, write_report
from ft_dist.ensemble.tickets import build_member, find_tickets, load_ticket
from tests.ensemble.conftest import image_batches, make_ticket

NORM = Normalization(mean=(0.5,), std=(0.25,))


def test_find_tickets_layouts(run_dir: Path, tmp_path: Path) -> None:
    paths, layout = find_tickets(run_dir)
    assert layout == "run" and [p.name for p in paths] == [f"ticket_0{i}.pt" for i in (1, 2, 3)]
    exp = tmp_path / "exp"
    for i in (1, 2, 10):
        make_ticket(exp / "members" / f"member_{i}" / "tickets" / "ticket_01.pt", i)
    paths, layout = find_tickets(exp)
    assert layout == "experiment"
    assert [p.parent.parent.name for p in paths] == ["member_1", "member_2", "member_10"]
    (exp / "members" / "member_3").mkdir()
    with pytest.raises(FileNotFoundError, match="member_3"):
        find_tickets(exp)
    with pytest.raises(FileNotFoundError, match="no tickets"):
        find_tickets(tmp_path)


def test_bad_ticket_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "ticket_01.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(ValueError, match="ticket_01.pt"):
        load_ticket(bad)


def test_build_member_applies_masks(run_dir: Path) -> None:
    ticket = load_ticket(find_tickets(run_dir)[0][0])
    model = build_member(ticket)
    params = dict(model.named_parameters())
    for name, mask in ticket.masks.items():
        assert torch.all(params[name][~mask] == 0)
    assert not model.training


def test_ensemble_is_mean_of_softmax(run_dir: Path) -> None:
    tickets = [load_ticket(p) for p in find_tickets(run_dir)[0]]
    models = [build_member(t) for t in tickets]
    batches = image_batches(10, 4, seed=0)
    preds = predict(models, batches, NORM)
    images = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        expected = torch.stack([m(NORM(images)).softmax(1) for m in models])
    assert torch.allclose(preds.member_probs, expected, atol=1e-6)
    assert torch.equal(preds.targets, torch.cat([b[1] for b in batches]))
    logits_mean = torch.stack([m(NORM(images)) for m in models]).mean(0).softmax(1)
    ensemble = metrics.ensemble_probs(preds.member_probs)
    assert torch.allclose(ensemble.float(), expected.mean(0), atol=1e-6)
    assert not torch.allclose(ensemble.float(), logits_mean, atol=1e-4)


def test_evaluate_and_report(run_dir: Path, tmp_path: Path) -> None:
    paths, layout = find_tickets(run_dir)
    tickets = [load_ticket(p) for p in paths]
    report = evaluate_tickets(
        tickets,
        layout,
        run_dir,
        lambda: image_batches(30, 8, seed=1),
        NORM,
        ood_sources={"ood": lambda: image_batches(12, 8, seed=2)},
        corruptions=["gaussian_noise", "contrast"],
        severities=[1, 5],
    )
    assert report["num_members"] == 3 and report["num_test_samples"] == 30
    assert len(report["members"]) == 3 and report["members"][0]["name"] == "member_1"
    for row in [*report["members"], report["ensemble"]]:
        assert set(row["test"]) == {"accuracy", "nll", "ece", "brier"}
        assert 0.0 <= row["ood"]["auroc_entropy"] <= 1.0
    density = report["members"][0]["mask_density"]
    assert density == pytest.approx(0.3, abs=0.01)
    assert report["flops"]["train_flops"] == pytest.approx(3e9)  # EDST: cumulative, the max
    assert 0 < report["flops"]["inference_flops_relative_to_dense"] < 3 * 1.0
    jaccard = report["diversity"]["mask_jaccard"]
    assert jaccard[0][0] == 1.0 and 0 < jaccard[0][1] < 1
    assert set(report["corruptions"]["ensemble"]) == {"gaussian_noise", "contrast"}
    assert set(report["corruptions"]["ensemble"]["contrast"]) == {"1", "5"}

    written = write_report(report, tmp_path / "out")
    loaded = json.loads(written["json"].read_text())
    assert loaded["ensemble"]["test"]["nll"] == pytest.approx(report["ensemble"]["test"]["nll"])
    markdown = written["markdown"].read_text()
    assert "| **ensemble** |" in markdown and "## Corruptions" in markdown
    for name in ("reliability", "layer_density", "disagreement", "accuracy_vs_flops"):
        assert written[name].stat().st_size > 1000
        assert written[name].read_bytes()[:4] == b"\x89PNG"
    flat = summary_metrics(report)
    assert flat["ensemble/nll"] == report["ensemble"]["test"]["nll"]
    assert "diversity/mean_mask_jaccard" in flat


def test_single_member_report(tmp_path: Path) -> None:
    root = tmp_path / "single"
    make_ticket(root / "tickets" / "ticket_01.pt", 1, density=1.0)
    paths, layout = find_tickets(root)
    report = evaluate_tickets(
        [load_ticket(p) for p in paths], layout, root, lambda: image_batches(9, 4, seed=3), NORM
    )
    assert report["ensemble"]["test"] == pytest.approx(report["members"][0]["test"])
    written = write_report(report, tmp_path / "out")
    assert json.loads(written["json"].read_text())["diversity"]["mean_kl"] is None


def test_incompatible_members(tmp_path: Path) -> None:
    root = tmp_path / "run"
    make_ticket(root / "tickets" / "ticket_01.pt", 1)
    other = make_ticket(root / "tickets" / "ticket_02.pt", 2)
    data = torch.load(other, weights_only=True)
    data["meta"]["num_classes"] = 7
    torch.save(data, other)
    paths, layout = find_tickets(root)
    with pytest.raises(ValueError, match="num_classes"):
        evaluate_tickets(
            [load_ticket(p) for p in paths], layout, root, lambda: image_batches(4, 4, 0), NORM
        )


def test_calibration_sizes_cost_and_ood_figures(run_dir: Path, tmp_path: Path) -> None:
    """Temperatures come from the validation split; the size curve and cost are exact."""
    paths, layout = find_tickets(run_dir)
    tickets = [load_ticket(p) for p in paths]
    test_batches = image_batches(40, 16, seed=11)
    val_batches = image_batches(30, 16, seed=12)
    report = evaluate_tickets(
        tickets,
        layout,
        run_dir,
        lambda: test_batches,
        NORM,
        val_source=lambda: val_batches,
        ood_sources={"ood": lambda: image_batches(12, 8, seed=2)},
    )
    models = [build_member(t) for t in tickets]
    test, val = predict(models, test_batches, NORM), predict(models, val_batches, NORM)
    val_ensemble = metrics.ensemble_log_probs(val.member_log_probs)
    test_ensemble = metrics.ensemble_log_probs(test.member_log_probs)
    temperature = metrics.fit_temperature(val_ensemble, val.targets)
    calibrated = report["ensemble"]["calibrated"]
    assert calibrated["temperature"] == pytest.approx(temperature)
    assert calibrated == pytest.approx(
        metrics.calibrated_metrics(test_ensemble, test.targets, temperature), rel=1e-6
    )
    member_t = metrics.fit_temperature(val.member_log_probs[2], val.targets)
    assert report["members"][2]["calibrated"]["temperature"] == pytest.approx(member_t)
    assert report["num_val_samples"] == 30 and report["ece_bins"] == 15
    # Sizes: 1 = the mean of the members' figures, M = the ensemble itself.
    sizes = report["ensemble_sizes"]
    assert [(p["size"], p["subsets"]) for p in sizes] == [(1, 3), (2, 3), (3, 1)]
    mean_nll = sum(m["test"]["nll"] for m in report["members"]) / 3
    assert sizes[0]["nll"] == pytest.approx(mean_nll)
    assert sizes[2]["nll"] == pytest.approx(report["ensemble"]["test"]["nll"])
    assert sizes[2]["calibrated_nll"] == pytest.approx(calibrated["nll"])
    pair = metrics.ensemble_log_probs(test.member_log_probs[[0, 2]]).exp()
    assert sizes[1]["accuracy"] == pytest.approx(
        sum(
            metrics.accuracy(
                metrics.ensemble_log_probs(test.member_log_probs[list(s)]).exp(), test.targets
            )
            for s in ((0, 1), (0, 2), (1, 2))
        )
        / 3  # fmt: skip
    )
    assert pair.shape == (40, 4)
    # Cost: parameters of the built model, active = all minus the masked-off weights.
    cost = report["cost"]
    dense = sum(p.numel() for p in models[0].parameters())
    off = sum(int((~mask).sum()) for mask in tickets[0].masks.values())
    assert cost["dense_parameters"] == dense and cost["active_parameters"][0] == dense - off
    assert cost["ensemble_active_parameters"] == sum(cost["active_parameters"])
    assert cost["inference_images_per_s"] > 0
    # OoD: AUROC, AUPR-in, AUPR-out and FPR95 by both scores, for every row.
    for row in [*report["members"], report["ensemble"]]:
        keys = {f"{k}_{s}" for k in ("auroc", "aupr_in", "aupr_out", "fpr95")
                for s in ("max_prob", "entropy")}  # fmt: skip
        assert set(row["ood"]) == keys
    written = write_report(report, tmp_path / "out")
    markdown = written["markdown"].read_text()
    assert "| T | calibrated NLL | calibrated ECE |" in markdown
    assert "## Ensemble size" in markdown and "## Parameters and throughput" in markdown
    flat = summary_metrics(report)
    assert flat["ensemble/calibrated_nll"] == pytest.approx(calibrated["nll"])
    assert flat["ensemble/fpr95_entropy"] == report["ensemble"]["ood"]["fpr95_entropy"]


def test_official_ece_bins_reach_every_table(run_dir: Path) -> None:
    paths, layout = find_tickets(run_dir)
    tickets = [load_ticket(p) for p in paths]
    batches = image_batches(25, 8, seed=4)
    report = evaluate_tickets(
        tickets, layout, run_dir, lambda: batches, NORM, num_bins=metrics.OFFICIAL_ECE_BINS
    )
    models = [build_member(t) for t in tickets]
    probs = metrics.ensemble_probs(predict(models, batches, NORM).member_probs)
    targets = torch.cat([b[1] for b in batches])
    assert report["ece_bins"] == 14 and len(report["reliability"]["ensemble"]["counts"]) == 14
    assert report["ensemble"]["test"]["ece"] == pytest.approx(metrics.ece(probs, targets, 14))
    assert "calibrated" not in report["ensemble"]  # no validation split given
