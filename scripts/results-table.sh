#!/usr/bin/env bash
# Train every shipped config (or the ones named) once, then print the `fmnist-mlp runs` table:
# the README's results table comes from this.
#
# Usage: scripts/results-table.sh [-r RUNS_DIR] [CONFIG.yaml ...]
#   default: all of configs/*.yaml except best.yaml (which takes minutes; name it to include it)
set -uo pipefail

runs_dir="runs/results-$(date +%Y%m%d-%H%M%S)"
if [[ ${1:-} == -r ]]; then runs_dir=$2; shift 2; fi
cd "$(dirname "$0")/.."
configs=("$@")
if [[ ${#configs[@]} -eq 0 ]]; then
    for c in configs/*.yaml; do [[ $c == configs/best.yaml ]] || configs+=("$c"); done
fi

failed=0
for config in "${configs[@]}"; do
    echo "== $config" >&2
    fmnist-mlp train --config "$config" --runs-dir "$runs_dir" --quiet >/dev/null || failed=1
done
fmnist-mlp runs --runs-dir "$runs_dir" --sort test_acc
exit $failed
