#!/usr/bin/env bash
# Train every shipped config (or the ones named) once, then print the `fmnist-mlp runs` table:
# docs/results.md's table of the lecture's configs comes from this.
#
# Usage: scripts/results-table.sh [-r RUNS_DIR] [CONFIG.yaml ...]
#   default: all of configs/*.yaml except best.yaml and distilled.yaml (a quarter of an hour
#   each; name them to include them)
set -uo pipefail

runs_dir="runs/results-$(date +%Y%m%d-%H%M%S)"
if [[ ${1:-} == -r ]]; then
    # -r needs a value, and an option is not one: "-r --help" must not become a folder.
    if [[ $# -lt 2 || -z $2 || $2 == -* ]]; then
        echo "results-table.sh: -r needs a runs directory (usage: scripts/results-table.sh [-r RUNS_DIR] [CONFIG.yaml ...])" >&2
        exit 2
    fi
    runs_dir=$2; shift 2
fi
# Paths given relative to the caller's directory, resolved before the cd below.
runs_dir=$(realpath -m -- "$runs_dir")
configs=()
for c in "$@"; do configs+=("$(realpath -m -- "$c")"); done
cd "$(dirname "$0")/.."
if [[ ${#configs[@]} -eq 0 ]]; then
    for c in configs/*.yaml; do
        [[ $c == configs/best.yaml || $c == configs/distilled.yaml ]] || configs+=("$c")
    done
fi

failed=0
for config in "${configs[@]}"; do
    echo "== $config" >&2
    fmnist-mlp train --config "$config" --runs-dir "$runs_dir" --quiet >/dev/null || failed=1
done
fmnist-mlp runs --runs-dir "$runs_dir" --sort test_acc
exit $failed
