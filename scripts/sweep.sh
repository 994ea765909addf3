#!/usr/bin/env bash
# Grid sweep: one `fmnist-mlp train` per combination, N at a time, then the `fmnist-mlp runs` table.
#
# Usage:
#   scripts/sweep.sh [options] AXIS... [-- EXTRA_TRAIN_ARGS...]
#
#   AXIS is KEY=V1,V2,... with YAML values; commas inside [...] belong to the value, so
#   model.hidden=[256],[512,256] is two values. The grid is the product of all axes.
#
# Options:
#   -c FILE   base config (default: configs/default.yaml, here or beside this script)
#   -f FILE   read axes from FILE, one KEY=V1,V2 per line ('#' starts a comment)
#   -j N      trainings in parallel (default: 2)
#   -t N      BLAS threads per training (default: 1, so parallel trials do not fight for cores)
#   -r DIR    runs directory (default: runs/sweep-<timestamp>, so the table shows this sweep only)
#   -d DIR    dataset directory (passed as --data-dir)
#   -n        dry run: print one shell command per trial and exit (feed to GNU parallel); every
#             word is quoted, so a line is safe to run as printed
#   -i N      run only trial N (1-based) of the grid, in the foreground (one Slurm array task)
#   -h        this help
#
# Axis values, -f lines and paths may not hold control characters (newline, tab, escape ...):
# they are refused, so one value can never become a second trial or command line.
#
# Example:
#   scripts/sweep.sh -j 4 optimizer.lr=3e-4,1e-3,3e-3 model.hidden=[256],[512,256] \
#       optimizer.name=adam,sgd -- --set train.epochs=5
#
# The same trials under GNU parallel, or as a Slurm job array (each task runs trial N itself; no
# line of text is evaluated):
#   scripts/sweep.sh -n -r runs/grid optimizer.lr=1e-3,3e-3 > trials.txt
#   parallel -j 4 --joblog runs/grid.joblog < trials.txt
#   sbatch --array=1-$(wc -l < trials.txt) --cpus-per-task=1 \
#       --wrap 'scripts/sweep.sh -i $SLURM_ARRAY_TASK_ID -r runs/grid optimizer.lr=1e-3,3e-3'
#   fmnist-mlp runs --runs-dir runs/grid --sort best_val_acc
# For random or Bayesian search, pruning and resumable sweeps: fmnist-mlp sweep run (docs/sweeps.md).
#
# Exit status: 0 if every trial finished, 1 if any failed, 2 on bad arguments, 130 if interrupted.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

config=configs/default.yaml
[[ -r $config ]] || config="$(cd "$(dirname "$0")/.." && pwd)/configs/default.yaml"
grid_file=""; jobs=2; threads=1; data_dir=""; dry_run=0; only=""
runs_dir="runs/sweep-$(date +%Y%m%d-%H%M%S)"
while getopts ":c:f:j:t:r:d:i:nh" opt; do
    # An option's value that is itself an option ("-d --help", "-r --runs-dir=/x") is a mistake,
    # not a folder to create: refused before anything is made (a path may be written ./-name).
    if [[ $opt != [nh:?] && $OPTARG == -* ]]; then
        echo "sweep.sh: -$opt needs a value, got the option $(printf %q "$OPTARG") (see -h)" >&2
        exit 2
    fi
    case $opt in
        c) config=$OPTARG ;;
        f) grid_file=$OPTARG ;;
        j) jobs=$OPTARG ;;
        t) threads=$OPTARG ;;
        r) runs_dir=$OPTARG ;;
        d) data_dir=$OPTARG ;;
        n) dry_run=1 ;;
        i) only=$OPTARG ;;
        h) usage; exit 0 ;;
        :) echo "sweep.sh: -$OPTARG needs a value (see -h)" >&2; exit 2 ;;
        *) echo "sweep.sh: unknown option -$OPTARG (see -h)" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

axes=()
while (($#)) && [[ $1 != -- ]]; do axes+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
extra=("$@")
if [[ -n $grid_file ]]; then
    [[ -r $grid_file ]] || { echo "sweep.sh: -f $grid_file: cannot read" >&2; exit 2; }
    while IFS= read -r line; do
        line=${line%%#*}; line=${line#"${line%%[![:space:]]*}"}; line=${line%"${line##*[![:space:]]}"}
        [[ -n $line ]] && axes+=("$line")
    done < "$grid_file"
fi
# At most 9 digits: bash arithmetic is 64-bit and wraps silently (-i 18446744073709551617 was 1).
[[ $jobs =~ ^[1-9][0-9]{0,8}$ ]] || { echo "sweep.sh: -j $(printf %q "$jobs"): expected a positive integer (at most 9 digits)" >&2; exit 2; }
[[ $threads =~ ^[1-9][0-9]{0,8}$ ]] || { echo "sweep.sh: -t $(printf %q "$threads"): expected a positive integer (at most 9 digits)" >&2; exit 2; }
[[ -z $only || $only =~ ^[1-9][0-9]{0,8}$ ]] || { echo "sweep.sh: -i $(printf %q "$only"): expected a trial number (1, 2, ...; at most 9 digits)" >&2; exit 2; }
has_control() { [[ $1 == *[[:cntrl:]]* ]]; }
for value in "$config" "$runs_dir" "$data_dir" "${axes[@]}" "${extra[@]}"; do
    if has_control "$value"; then
        echo "sweep.sh: refused $(printf %q "$value"): control characters (newline, tab, escape ...) are not allowed" >&2
        exit 2
    fi
done
[[ -n $runs_dir ]] || { echo "sweep.sh: -r: empty runs directory" >&2; exit 2; }
# The data cache defaults to $HOME/.cache: with HOME empty or unset that would be /.cache.
if [[ -z $data_dir && -z ${FMNIST_MLP_DATA_DIR:-} && -z ${XDG_CACHE_HOME:-} ]] \
        && [[ -z ${HOME:-} || ${HOME:-} == / ]]; then
    echo "sweep.sh: HOME is empty or /; give the dataset directory with -d DIR (or set FMNIST_MLP_DATA_DIR)" >&2
    exit 2
fi
[[ -r $config ]] || { echo "sweep.sh: -c $config: config file not found" >&2; exit 2; }
# Not on PATH (a fresh shell after `make train`): the checkout's own virtual env, if it has one.
venv_bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
if ! command -v fmnist-mlp >/dev/null && [[ -x $venv_bin/fmnist-mlp ]]; then
    PATH=$venv_bin:$PATH
fi
command -v fmnist-mlp >/dev/null || { echo "sweep.sh: fmnist-mlp not on PATH: activate the virtual env (. .venv/bin/activate, made by make train) or pip install -e ." >&2; exit 2; }

# Expand the grid into one line per trial: its `--set` values separated by the unit separator
# (\x1f), which no value can hold (control characters are refused above). The values are read
# back into an array, never evaluated.
trials=$(python3 - "${axes[@]}" <<'PY'
import itertools, sys

def split_values(text):
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    return values + [current]

axes = []
for axis in sys.argv[1:]:
    key, sep, values = axis.partition("=")
    if not sep or not key or not values:
        sys.exit(f"sweep.sh: axis {axis!r}: expected KEY=V1,V2,...")
    axes.append([f"{key}={v.strip()}" for v in split_values(values)])
for combo in itertools.product(*axes):
    print("\x1f".join(combo))
PY
) || exit 2

mapfile -t trial_lines <<< "$trials"
total=${#trial_lines[@]}
width=${#total}

train_args() {  # $1: trial index (1-based), $2: its --set values (\x1f-separated) -> ${args[@]}
    local sets=() value
    IFS=$'\x1f' read -r -a values <<< "$2"
    for value in "${values[@]}"; do sets+=(--set "$value"); done
    args=(train --config "$config" "${sets[@]}" --name "$(printf "sweep-%0${width}d" "$1")"
          --runs-dir "$runs_dir" --quiet)
    [[ -n $data_dir ]] && args+=(--data-dir "$data_dir")
    args+=("${extra[@]}")
}

trial_command() {  # $1: trial index (1-based), $2: its --set values; every word quoted with %q
    local args
    train_args "$1" "$2"
    printf 'OMP_NUM_THREADS=%s OPENBLAS_NUM_THREADS=%s MKL_NUM_THREADS=%s fmnist-mlp' \
        "$threads" "$threads" "$threads"
    printf ' %q' "${args[@]}"
    printf '\n'
}

if ((dry_run)); then
    for i in "${!trial_lines[@]}"; do trial_command $((i + 1)) "${trial_lines[$i]}"; done
    exit 0
fi
if [[ -n $only ]]; then
    ((only <= total)) || { echo "sweep.sh: -i $only: the grid has $total trial(s)" >&2; exit 2; }
    train_args "$only" "${trial_lines[$((only - 1))]}"
    OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
        exec fmnist-mlp "${args[@]}"
fi

log_dir="$runs_dir/.sweep-logs"
mkdir -p "$log_dir" || exit 2
echo "sweep: $total trial(s), $jobs at a time, $threads BLAS thread(s) each, into $runs_dir" >&2

run_trial() {  # $1: trial index (1-based), $2: its --set values (\x1f-separated)
    local args
    train_args "$1" "$2"
    # exec: the trial *is* this background process, so the TERM below reaches fmnist-mlp itself.
    OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
        exec fmnist-mlp "${args[@]}"
}

# Background jobs of a script ignore SIGINT, so Ctrl-C is forwarded as SIGTERM, which
# fmnist-mlp treats like Ctrl-C: it saves the last epoch, marks the run interrupted, exits 130.
failed=0; running=0; interrupted=0
trap 'interrupted=1; kill -TERM $(jobs -pr) 2>/dev/null' INT TERM
for i in "${!trial_lines[@]}"; do
    if ((running >= jobs)); then
        wait -n; status=$?
        ((interrupted)) && break
        ((status != 0)) && failed=$((failed + 1))
        running=$((running - 1))
    fi
    ((interrupted)) && break
    n=$((i + 1))
    echo "[$n/$total] ${trial_lines[$i]//$'\x1f'/ }" >&2
    # Each trial's stdout (its run directory) and stderr (progress, errors) go to log files.
    (run_trial "$n" "${trial_lines[$i]}") > "$log_dir/trial-$n.out" 2> "$log_dir/trial-$n.log" &
    running=$((running + 1))
done
while ((running > 0 && !interrupted)); do
    wait -n; status=$?
    ((interrupted)) && break
    ((status == 127)) && break             # no children left
    ((status != 0)) && failed=$((failed + 1))
    running=$((running - 1))
done
# After Ctrl-C, let every trial finish saving its checkpoint before printing the table.
while ((interrupted)) && [[ -n $(jobs -pr) ]]; do wait; done

fmnist-mlp runs --runs-dir "$runs_dir" --sort best_val_acc
if ((interrupted)); then
    echo "sweep: interrupted; resume a trial with: fmnist-mlp train --resume RUN_DIR" >&2
    exit 130
fi
if ((failed)); then
    echo "sweep: $failed of $total trial(s) failed; see $log_dir/" >&2
    exit 1
fi
echo "sweep: all $total trial(s) finished" >&2
