"""`ft-dist --help` must stay fast: building the parser imports no torch, torchvision or ray."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from ft_dist.cli import evaluate

HEAVY = ("torch", "torchvision", "ray")


def test_building_the_parser_imports_nothing_heavy():
    code = (
        "import json, sys\n"
        "from ft_dist.cli import build_parser\n"
        "parser = build_parser()\n"
        "parser.format_help()\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert not loaded & set(HEAVY), f"`ft-dist --help` imports {sorted(loaded & set(HEAVY))}"


def test_evaluate_help_lists_the_real_corruptions(capsys):
    from ft_dist.ensemble.corruptions import CORRUPTIONS

    parser = argparse.ArgumentParser()
    evaluate.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    assert ", ".join(CORRUPTIONS) in " ".join(capsys.readouterr().out.split())


def test_ray_log_dedup_is_off_unless_asked_for(monkeypatch) -> None:
    """Ray's dedup folds `[member_2] resumed from ...` into member 1's line; ft-dist turns
    it off before any command imports Ray, and leaves a user's own setting alone."""
    import os

    from ft_dist.cli import main

    monkeypatch.delenv("RAY_DEDUP_LOGS", raising=False)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert os.environ["RAY_DEDUP_LOGS"] == "0"
    monkeypatch.setenv("RAY_DEDUP_LOGS", "1")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert os.environ["RAY_DEDUP_LOGS"] == "1"
