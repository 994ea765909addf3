#!/usr/bin/env bash
# Knowledge distillation end to end: train the teachers (configs/best.yaml, seeds 0 1 2), then the
# student (configs/distilled.yaml) with their run directories as distill.teachers.
#
# Usage: scripts/distill.sh [-r RUNS_DIR] [TEACHER_RUN ...]
#   with TEACHER_RUNs given, no teachers are trained: those runs teach (e.g. an earlier call's).
# Prints the teachers' and the student's run directories; `fmnist-mlp runs --runs-dir RUNS_DIR`
# then shows their accuracies and wall times (the teachers' time is the student's real cost too).
set -euo pipefail

runs_dir="runs/distill-$(date +%Y%m%d-%H%M%S)"
if [[ ${1:-} == -r ]]; then runs_dir=$2; shift 2; fi
cd "$(dirname "$0")/.."
teachers=("$@")
if [[ ${#teachers[@]} -eq 0 ]]; then
    for seed in 0 1 2; do
        echo "== teacher: configs/best.yaml seed $seed" >&2
        teachers+=("$(fmnist-mlp train --config configs/best.yaml --set seed=$seed \
                      --name "teacher-seed$seed" --runs-dir "$runs_dir" --quiet)")
    done
fi
list=$(IFS=,; echo "${teachers[*]}")
echo "teachers: ${teachers[*]}" >&2
echo "== student: configs/distilled.yaml" >&2
fmnist-mlp train --config configs/distilled.yaml --set "distill.teachers=[$list]" \
    --runs-dir "$runs_dir" --quiet
