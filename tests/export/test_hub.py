"""`ft-dist export --push-to-hub`: refused with one line, without network, when there is no
token (before anything is exported) and when the Hub cannot be reached (the export stays)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ft_dist.export.hub import check_token
from tests.export.test_export import exported, mnist_root  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
CLI = "import sys; from ft_dist.cli import main; sys.exit(main(sys.argv[1:]))"


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in its own process: huggingface_hub reads HF_HOME and its endpoint on import."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    clean |= {"HF_HOME": str(cwd / "hf-home"), "PYTHONPATH": str(REPO)} | env
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        env=clean,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_no_token_is_refused_before_the_export(exported, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    done = run_cli(
        ["export", str(exported[0]), "--out", str(out), "--push-to-hub", "me/m"], {}, tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ft-dist export: error: --push-to-hub me/m: no Hugging Face token; run `hf auth login` "
        "or set HF_TOKEN (a token with write access), then export again"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    "env",
    [
        {"HF_ENDPOINT": "http://127.0.0.1:9"},  # nothing listens: connection refused
        {"HF_HUB_OFFLINE": "1"},
    ],
    ids=["unreachable", "offline-mode"],
)
def test_an_upload_that_fails_is_one_line_and_keeps_the_export(
    exported,  # noqa: F811
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    out = tmp_path / "out"
    args = ["export", str(exported[0]), "--out", str(out), "--no-program", "--push-to-hub", "me/m"]
    done = run_cli(args, {"HF_TOKEN": "hf_not_a_real_token"} | env, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("ft-dist export")]
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("ft-dist export: error: --push-to-hub me/m: the upload failed (")
    assert lines[0].endswith(f"the export is in {out}: upload it later with `hf upload me/m {out}`")
    assert (out / "README.md").is_file() and (out / "member_01.safetensors").is_file()


def test_a_repository_is_owner_slash_name() -> None:
    with pytest.raises(ValueError, match="give the repository as OWNER/NAME"):
        check_token("just-a-name")
