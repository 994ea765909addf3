#!/usr/bin/env bash
# Train every shipped config (or the ones named) once, then print the `fmnist-mlp runs` table:
# docs/results.md's table of the lecture's configs comes from this.
#
# Usage: scripts/results-table.sh [-h] [-r RUNS_DIR] [--] [CONFIG.yaml ...]
#   default: all of configs/*.yaml except best.yaml and distilled.yaml (a quarter of an hour
#   each; name them to include them)
set -uo pipefail

usage="usage: scripts/results-table.sh [-r RUNS_DIR] [--] [CONFIG.yaml ...]"
runs_dir=""
# Options first; "--" ends them (a config whose name starts with "-" comes after it). Anything
# else starting with "-" is a usage error, not a config to train: "--help" is not a file.
while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        -r)
            # -r needs a value, and an option is not one: "-r --help" must not become a folder.
            if [[ $# -lt 2 || -z $2 || $2 == -* ]]; then
                echo "results-table.sh: -r needs a runs directory ($usage)" >&2
                exit 2
            fi
            if [[ -n $runs_dir ]]; then
                echo "results-table.sh: -r given twice ($usage)" >&2
                exit 2
            fi
            runs_dir=$2; shift 2 ;;
        --) shift; break ;;
        -*) echo "results-table.sh: unknown option $1 ($usage)" >&2; exit 2 ;;
        *) break ;;
    esac
done
runs_dir=${runs_dir:-runs/results-$(date +%Y%m%d-%H%M%S)}
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
