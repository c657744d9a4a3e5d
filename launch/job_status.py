"""The exit status of a submitted Ray job, for launch/submit.sh: 0 only if it SUCCEEDED.

    python launch/job_status.py SUBMISSION_ID [SUBMIT_EXIT_CODE]

`ray job submit` (Ray 2.60) exits 1 for a FAILED job but 0 for one that `ray job stop`
stopped, so a script could not tell a stopped run from a finished one. submit.sh asks here
once `ray job submit` has returned, with the client settings of its environment
(RAY_ADDRESS, RAY_AUTH_MODE and the token), and exits with:

| job status | exit code |
|---|---|
| SUCCEEDED | 0 |
| FAILED | the driver's exit code (`ft-dist train`: 1 a run error, 2 a config error, 130 Ctrl-C, 143 SIGTERM), else 1 |
| STOPPED (`ray job stop`) | 143, as a process ended by SIGTERM |
| PENDING / RUNNING (the log stream ended early) | 1 |
| no such job (the submission itself failed) | SUBMIT_EXIT_CODE, else 1 |

For every status but SUCCEEDED it prints one line on stderr: the status, Ray's message and
what to do.
"""

from __future__ import annotations

import os
import signal
import sys

STOPPED_EXIT = 128 + signal.SIGTERM  # what `ray job stop` sends the driver


def exit_code(status: str, driver_exit_code: int | None = None) -> int:
    """The exit code of a job that ended with `status` (a Ray JobStatus name)."""
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return STOPPED_EXIT
    if status == "FAILED" and driver_exit_code and 0 < driver_exit_code < 256:
        return driver_exit_code
    return 1


def status_line(job_id: str, status: str, message: str | None, code: int) -> str:
    """The one line for a job that did not succeed (empty for one that did)."""
    if status == "SUCCEEDED":
        return ""
    said = f" ({message.strip().splitlines()[0][:300]})" if message and message.strip() else ""
    if status == "STOPPED":
        fix = "its newest checkpoint is kept: submit the same command again to resume"
    elif status == "FAILED":
        fix = f"its output is above; `ray job logs {job_id}` shows it again"
    else:
        fix = (
            f"the job still runs but its log stream ended: follow it with "
            f"`ray job logs --follow {job_id}`, stop it with `ray job stop {job_id}`"
        )
    return f"submit.sh: job {job_id} {status}{said}; exit {code}: {fix}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    job_id = args[0]
    submit_code = int(args[1]) if len(args) > 1 else 1
    from ray.job_submission import JobSubmissionClient

    try:
        info = JobSubmissionClient(os.environ.get("RAY_ADDRESS")).get_job_info(job_id)
    except Exception as error:  # noqa: BLE001 - no job (the submission failed), no cluster
        print(
            f"submit.sh: no status for job {job_id} ({type(error).__name__}: "
            f"{str(error).strip()[:300]}); `ray job submit` exited {submit_code}",
            file=sys.stderr,
        )
        return submit_code or 1
    status = str(getattr(info.status, "value", info.status))
    code = exit_code(status, info.driver_exit_code)
    line = status_line(job_id, status, info.message, code)
    if line:
        print(line, file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
