"""Grid overrides, space files and the points a sweep draws (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_dist.config import apply_overrides
from ft_dist.orchestrate.sweep_space import (
    as_overrides,
    draw_points,
    load_space,
    split_overrides,
    split_top_level,
    trial_name,
)


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("0.05,0.1,0.2", ["0.05", "0.1", "0.2"]),
        ("0.5", ["0.5"]),
        ("[0.5,0.75]", ["[0.5,0.75]"]),
        ("{a: 0.5, b: 0.7}", ["{a: 0.5, b: 0.7}"]),
        ("[1,2],[3,4]", ["[1,2]", "[3,4]"]),
        ("{a: [1, 2]},{a: 3}", ["{a: [1, 2]}", "{a: 3}"]),
        ("'a,b',c", ["'a,b'", "c"]),
        ('"x,y"', ['"x,y"']),
        ("[1,2", ["[1,2"]),  # unbalanced: one value, YAML names the mistake
    ],
)
def test_commas_split_only_at_the_top_level(raw: str, parts: list[str]) -> None:
    assert split_top_level(raw) == parts


def test_overrides_split_into_fixed_and_grid_axes() -> None:
    fixed, axes = split_overrides(
        [
            "train.epochs=2",
            "sparsity.density=0.05,0.1,0.2",
            "optim.lr=0.05,0.1",
            "model.kwargs={a: 0.5, b: 0.7}",
            "optim.milestones=[0.5,0.75]",
        ]
    )
    assert fixed == [
        "train.epochs=2",
        "model.kwargs={a: 0.5, b: 0.7}",
        "optim.milestones=[0.5,0.75]",
    ]
    assert axes == {"sparsity.density": [0.05, 0.1, 0.2], "optim.lr": [0.05, 0.1]}
    # Flow values stay whole inside a grid too.
    _, axes = split_overrides(["optim.milestones=[0.5,0.75],[0.3,0.6]"])
    assert axes == {"optim.milestones": [[0.5, 0.75], [0.3, 0.6]]}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=0.1,0.1"], "listed twice"),
        (["optim.lr=0.1,,0.2"], "empty value"),
        (["optim.lr=0.1,0.2", "optim.lr=0.3,0.4"], "given twice"),
    ],
)
def test_bad_grid_overrides_fail_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        split_overrides(overrides)
    assert "\n" not in str(error.value)


def test_grid_points_are_the_product_in_order() -> None:
    _, axes = split_overrides(["sparsity.density=0.05,0.1", "optim.lr=0.05,0.1"])
    points = draw_points(axes, {})
    assert points == [
        {"sparsity.density": 0.05, "optim.lr": 0.05},
        {"sparsity.density": 0.05, "optim.lr": 0.1},
        {"sparsity.density": 0.1, "optim.lr": 0.05},
        {"sparsity.density": 0.1, "optim.lr": 0.1},
    ]
    assert len({trial_name(p) for p in points}) == 4


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_space_draws_are_seeded_in_range_and_combined_with_the_grid(tmp_path: Path) -> None:
    dims = load_space(
        _space(
            tmp_path,
            "optim.lr: {loguniform: [0.001, 0.1]}\n"
            "sparsity.density: {uniform: [0.05, 0.3]}\n"
            "sparsity.growth: {choice: [gradient, random]}\n",
        )
    )
    _, axes = split_overrides(["train.epochs=1,2"])
    points = draw_points(axes, dims, num_samples=3, seed=7)
    assert len(points) == 6  # 3 draws x 2 grid points
    assert points == draw_points(axes, dims, num_samples=3, seed=7)  # a re-run draws the same
    assert points != draw_points(axes, dims, num_samples=3, seed=8)
    for point in points:
        assert 0.001 <= point["optim.lr"] <= 0.1 and type(point["optim.lr"]) is float
        assert 0.05 <= point["sparsity.density"] <= 0.3
        assert point["sparsity.growth"] in ("gradient", "random")
    # Each draw is shared by every grid point, as Tune combines grid_search with samples.
    assert points[0]["optim.lr"] == points[1]["optim.lr"]
    assert [p["train.epochs"] for p in points[:2]] == [1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optim.lr: 0.1\n", "give one of choice, uniform, loguniform"),
        ("optim.lr: {normal: [0, 1]}\n", "give one of choice"),
        ("optim.lr: {uniform: [0.2, 0.1]}\n", "low < high"),
        ("optim.lr: {uniform: [0.1]}\n", r"\[low, high\], two numbers"),
        ("optim.lr: {loguniform: [0, 0.1]}\n", "low > 0"),
        ("sparsity.growth: {choice: []}\n", "non-empty list"),
        ("- optim.lr\n", "must map dotted keys"),
        ("optim.lr: {uniform: [0.1, 0.2]\n", "not valid YAML"),
    ],
)
def test_bad_space_files_fail_in_one_line_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as error:
        load_space(_space(tmp_path, text))
    assert "\n" not in str(error.value) and "--space" in str(error.value)


def test_space_file_missing_and_misuse_of_samples(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="--num-samples draws"):
        draw_points({"optim.lr": [0.1, 0.2]}, {}, num_samples=2)
    dims = load_space(_space(tmp_path, "optim.lr: {uniform: [0.01, 0.1]}\n"))
    with pytest.raises(ValueError, match="both a grid override and in the --space"):
        draw_points({"optim.lr": [0.1, 0.2]}, dims)


def test_a_point_becomes_overrides_that_read_back_the_same_values() -> None:
    point = {"optim.lr": 0.1, "sparsity.growth": "random", "optim.milestones": [0.5, 0.75]}
    data = apply_overrides({}, as_overrides(point))
    assert data == {
        "optim": {"lr": 0.1, "milestones": [0.5, 0.75]},
        "sparsity": {"growth": "random"},
    }
    # The name is a function of the values only: the same values find the same directory.
    assert trial_name(point) == trial_name(dict(reversed(point.items())))
    assert trial_name(point) != trial_name({**point, "optim.lr": 0.2})
    assert trial_name(point).startswith("trial-") and len(trial_name(point)) == 14
