#!/usr/bin/env bash
# `make demo`: the main job, end to end on this machine.
#
#   1. bundled real MNIST digits (+ OoD photo crops) -> WebDataset shards in data/mnist
#   2. a local multi-node Ray cluster (head + 1 worker node, token auth), torn down at exit
#   3. EDST (M = 3 tickets, density 0.2) submitted with `ray job submit`: 2 Ray Train workers
#   4. evaluation of every ticket and of the ensemble: report.json, report.md, plots
#
# The last line printed is the path of report.json. Re-running with the same RUN_NAME
# resumes (a finished run is not retrained) and re-evaluates; RUN_NAME=x make demo for a new run.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bin="$repo/.venv/bin"
run_name="${RUN_NAME:-demo-edst}"
data="data/mnist"
config="configs/demo_edst.yaml"
started=$SECONDS

step() { printf '\n==> [%s, +%ds] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - started))" "$*"; }

step "1/4 bundled MNIST shards in $data"
if [[ -f $data/train/manifest.json ]]; then
  echo "reusing $data (delete it to rewrite)"
else
  "$bin/ft-dist" shards mnist --out "$data"
fi

step "2/4 local Ray cluster: head + 1 worker node, 1 CPU each"
cluster_dir="$(mktemp -d "/tmp/ft_demo_$(id -u)_XXXX")"
cleanup() {
  "$bin/python" launch/local_cluster.py down --dir "$cluster_dir" >/dev/null 2>&1 || true
  rm -rf "$cluster_dir"
}
trap cleanup EXIT
"$bin/python" launch/local_cluster.py up --dir "$cluster_dir" --worker-nodes 1 --head-cpus 1 --worker-cpus 1
# shellcheck disable=SC1091  # written by local_cluster.py: RAY_ADDRESS and token auth
source "$cluster_dir/cluster.env"

step "3/4 EDST training: $config, run $run_name (ray job submit to $RAY_ADDRESS)"
PATH="$bin:$PATH" launch/submit.sh "$config" "train.run_name=$run_name"
run_dir="runs/$run_name"

step "4/4 evaluation of the 3 tickets and their ensemble"
"$bin/ft-dist" evaluate "$run_dir" --ood ood --corruptions gaussian_noise contrast --severities 1 3 \
  | tee "$cluster_dir/evaluate.log"
report="$(tail -n 1 "$cluster_dir/evaluate.log")"

step "done in $((SECONDS - started)) s: tables in ${report%.json}.md, plots in $(dirname "$report")/plots"
echo "$report"
