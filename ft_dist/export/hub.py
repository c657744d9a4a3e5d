"""`ft-dist export --push-to-hub REPO`: upload an export directory to the Hugging Face Hub.

The token is checked before anything is exported (`check_token`), so a missing login costs
nothing; an upload that fails (offline, refused, no such organisation) is one line naming
the repository and what to do, and leaves the export on disk for a later upload.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HTTPError, OfflineModeIsEnabled

from ft_dist.utils import first_line


def check_token(repo: str) -> str:
    """The Hugging Face token to push with, or a ValueError saying how to log in."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"--push-to-hub {repo!r}: give the repository as OWNER/NAME")
    token = get_token()
    if not token:
        raise ValueError(
            f"--push-to-hub {repo}: no Hugging Face token; run `hf auth login` or set HF_TOKEN "
            "(a token with write access), then export again"
        )
    return token


def push(out: str | Path, repo: str, token: str, private: bool = False) -> str:
    """Create ``repo`` (a model repository, kept if it exists) and upload ``out`` to it in
    one commit; the repository's URL."""
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo,
            folder_path=str(out),
            repo_type="model",
            commit_message="ft-dist export",
        )
    except (HTTPError, OfflineModeIsEnabled, OSError) as error:
        raise ValueError(
            f"--push-to-hub {repo}: the upload failed ({first_line(error)}); the export is in "
            f"{out}: upload it later with `hf upload {repo} {out}`"
        ) from None
    return str(url)
