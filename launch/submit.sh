#!/usr/bin/env bash
# Submit `ft-dist train CONFIG [key=value ...]` to a Ray cluster as a Ray job:
#
#   RAY_ADDRESS=http://HEAD:8265 launch/submit.sh configs/demo_dst.yaml train.run_name=x
#   source /tmp/ft_dist_cluster_$(id -u)/cluster.env && launch/submit.sh configs/demo_dst.yaml
#
# FT_DIST_COMMAND=sweep submits `ft-dist sweep CONFIG [key=a,b ...] [--scheduler asha ...]`
# instead (the arguments go to the command as they are; default: train):
#
#   FT_DIST_COMMAND=sweep launch/submit.sh configs/demo_dst.yaml optim.lr=0.05,0.1
#
# Runs `ray job submit --working-dir . -- ft-dist COMMAND ...` from the repository root (so
# the configs travel with the job) and waits, streaming the job's output: rank-0 progress,
# then the run (or sweep) directory as the job's last line. Exit status = the job's, from its final status
# (launch/job_status.py): 0 only for SUCCEEDED; FAILED = the driver's exit code (1 when
# unknown); STOPPED (`ray job stop`) = 143; a job still running when the log stream ended =
# 1; each with one line saying so (`ray job submit` alone exits 0 for a stopped job). With
# FT_DIST_SUBMIT_OPTS=--no-wait it exits once the job is submitted, with `ray job submit`'s
# status.
#
# Token auth (Ray 2.60): a cluster started with RAY_AUTH_MODE=token rejects clients without
# its token. `ray job submit` only sends one when RAY_AUTH_MODE=token is set in *its*
# environment, and then reads it from RAY_AUTH_TOKEN, else the file named by
# RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. This script sets RAY_AUTH_MODE=token unless
# you set RAY_AUTH_MODE yourself (e.g. "disabled" for a cluster without auth), and fails
# early when no token can be found. Get a cluster's token on its head with
# `ray get-auth-token`; never put it in a config file or on the command line.
#
# Relative paths inside the config (data.root, train.output_dir, ...) are resolved against
# the directory you submit from (FT_DIST_BASE_DIR, passed to the job), not against the
# job's unpacked copy of the working dir; on a remote cluster use absolute shared paths or
# URLs. WANDB_API_KEY is *not* forwarded: set it in the nodes' environment (see
# launch/cluster.yaml), so it never appears in the job's runtime_env.
#
# Extra `ray job submit` options go in FT_DIST_SUBMIT_OPTS, e.g. FT_DIST_SUBMIT_OPTS=--no-wait
# (the submission id is set here: ft-dist-<date>-<time>-<pid>-<random>).
set -euo pipefail

usage() {
  echo "usage: RAY_ADDRESS=http://HEAD:8265 [FT_DIST_COMMAND=train|sweep] $0 CONFIG [key=value ...]" >&2
  exit 2
}
[[ $# -ge 1 && $1 != -h && $1 != --help ]] || usage

# The ft-dist commands that take CONFIG [overrides]: the others read a run directory.
command="${FT_DIST_COMMAND:-train}"
if [[ $command != train && $command != sweep ]]; then
  echo "error: FT_DIST_COMMAND=$command: submit.sh runs 'ft-dist train' or 'ft-dist sweep';" \
       "set FT_DIST_COMMAND=train or sweep (or unset it for train)" >&2
  exit 2
fi

if [[ -z ${RAY_ADDRESS:-} ]]; then
  echo "error: RAY_ADDRESS is not set: export RAY_ADDRESS=http://HEAD:8265 (the dashboard" \
       "address), or 'source <dir>/cluster.env' for launch/local_cluster.py" >&2
  exit 2
fi

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
  token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
  if [[ ! -s $token_file ]]; then
    echo "error: token auth is on but no token was found (RAY_AUTH_TOKEN unset, $token_file" \
         "missing or empty). Copy the output of 'ray get-auth-token' on the head into" \
         "~/.ray/auth_token, or set RAY_AUTH_TOKEN_PATH; RAY_AUTH_MODE=disabled for a" \
         "cluster without auth" >&2
    exit 2
  fi
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="${FT_DIST_BASE_DIR:-$PWD}"
env_vars="\"FT_DIST_BASE_DIR\": \"${base}\""
# Fault points for `make chaos` (ft_dist/failpoints.py): inert unless this names a directory.
[[ -n ${FT_DIST_FAILPOINTS:-} ]] && env_vars+=", \"FT_DIST_FAILPOINTS\": \"${FT_DIST_FAILPOINTS}\""
runtime_env="{\"env_vars\": {${env_vars}}}"
# The `ray` CLI: FT_DIST_RAY, else the repository's .venv/bin/ray, else ray on PATH.
ray_bin="ray"
[[ -x $repo/.venv/bin/ray ]] && ray_bin="$repo/.venv/bin/ray"
ray_bin="${FT_DIST_RAY:-$ray_bin}"
# The Python that has Ray: the one `ray` itself runs with (its #! line), for job_status.py.
ray_python="$(sed -n '1s/^#![[:space:]]*//p' "$(command -v "$ray_bin")" 2>/dev/null || true)"
[[ -x ${ray_python%% *} ]] || ray_python="python3"
submission_id="ft-dist-$(date +%Y%m%d-%H%M%S)-$$-$RANDOM"

cd "$repo"
submit_status=0
# shellcheck disable=SC2086  # FT_DIST_SUBMIT_OPTS is a list of options
"$ray_bin" job submit --address "$RAY_ADDRESS" --working-dir . \
  --submission-id "$submission_id" --runtime-env-json "$runtime_env" ${FT_DIST_SUBMIT_OPTS:-} \
  -- ft-dist "$command" "$@" || submit_status=$?
if [[ " ${FT_DIST_SUBMIT_OPTS:-} " == *" --no-wait "* ]]; then
  exit "$submit_status"
fi
# shellcheck disable=SC2086  # ray_python may be "interpreter arguments" (a #! line)
exec $ray_python "$repo/launch/job_status.py" "$submission_id" "$submit_status"
