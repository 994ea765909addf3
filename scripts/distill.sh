#!/usr/bin/env bash
# Knowledge distillation end to end: train the teachers (the sweep SPEC, sweeps/teachers-long.yaml
# by default: best.yaml's recipe at 200 epochs, seeds 0-2), then the student
# (configs/distilled.yaml) with every finished trial's run directory as distill.teachers.
#
# Usage: scripts/distill.sh [-r RUNS_DIR] [-s SPEC] [-j JOBS] [TEACHER_RUN ...] [-- STUDENT_ARGS]
#   RUNS_DIR  where the teachers' sweep (RUNS_DIR/teachers) and the student go
#             (default: runs/distill-YYYYmmdd-HHMMSS)
#   SPEC      the sweep that trains the teachers; run again to continue an interrupted one
#   JOBS      sweep workers on this machine (default 3)
#   TEACHER_RUN ...  skip the sweep: these runs teach (e.g. an earlier call's)
#   STUDENT_ARGS     extra `fmnist-mlp train` arguments for the student, e.g. --set seed=0
# The teachers (split seed 0) and the student share the train/validation split:
# distilled.yaml draws it with data.split_seed 0, so a student of another seed (-- --set seed=1)
# still validates on images no teacher trained on. Prints the student's run directory;
# `fmnist-mlp runs --runs-dir RUNS_DIR/teachers/runs` shows the teachers' accuracies and wall
# times (their training is the student's real cost too).
set -euo pipefail

runs_dir="runs/distill-$(date +%Y%m%d-%H%M%S)"
spec=sweeps/teachers-long.yaml
jobs=3
teachers=()
student_args=()
# An option's value must be there, and must not be another option ("-r --help").
needs_value() {
    if [[ $# -lt 2 || -z $2 || $2 == -* ]]; then
        echo "distill.sh: $1 needs a value (see the usage at the top of the script)" >&2
        exit 2
    fi
}
while [[ $# -gt 0 ]]; do
    case $1 in
        -r) needs_value "$@"; runs_dir=$2; shift 2 ;;
        -s) needs_value "$@"; spec=$2; shift 2 ;;
        -j) needs_value "$@"; jobs=$2; shift 2 ;;
        --) shift; student_args=("$@"); break ;;
        -*) echo "distill.sh: unknown option $1 (see the usage at the top of the script)" >&2; exit 2 ;;
        *) teachers+=("$(realpath -m -- "$1")"); shift ;;
    esac
done
# Paths given relative to the caller's directory, resolved before the cd below.
runs_dir=$(realpath -m -- "$runs_dir")
spec=$(realpath -m -- "$spec")
cd "$(dirname "$0")/.."

if [[ ${#teachers[@]} -eq 0 ]]; then
    echo "== teachers: fmnist-mlp sweep run $spec --dir $runs_dir/teachers --jobs $jobs" >&2
    fmnist-mlp sweep run "$spec" --dir "$runs_dir/teachers" --jobs "$jobs" >&2
    # NUL-separated: a run directory's path may hold a newline (it is under RUNS_DIR).
    mapfile -d '' -t teachers < <(fmnist-mlp sweep status "$runs_dir/teachers" --json | python3 -c '
import json, sys
for trial in json.load(sys.stdin)["trials"]:
    if trial["state"] == "finished":
        sys.stdout.write(trial["run_dir"] + "\0")')
    if [[ ${#teachers[@]} -eq 0 ]]; then
        echo "distill.sh: the sweep in $runs_dir/teachers has no finished trial to teach" >&2
        exit 1
    fi
fi
# A JSON list is a YAML flow list whose every path is one double-quoted string: a ',', ' #',
# ': ' or quote inside a path stays part of it.
list=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${teachers[@]}")
echo "teachers: ${teachers[*]}" >&2
echo "== student: configs/distilled.yaml" >&2
fmnist-mlp train --config configs/distilled.yaml --set "distill.teachers=$list" \
    --runs-dir "$runs_dir" --name student --quiet ${student_args[@]+"${student_args[@]}"}
