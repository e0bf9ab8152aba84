#!/usr/bin/env bash
# Training speed of the digits demo on a shared CPU: alone, beside a second `dico train`, and beside a busy loop.
#
#   benchmarks/contention.sh [STEPS] [-- extra dico train flags]
#
# STEPS: training steps of each measured run (default 400). The speed is read from the run's log (log.jsonl:
# steps/s per logging window), so start-up and the end of the run do not count. Environment:
#   DICO   the dico to measure: a checkout (its src/ runs with this Python), or a command such as
#          /path/to/venv/bin/dico (default: this checkout), e.g. for before/after comparisons
#   CORES  the cores every process is pinned to, as taskset -c takes them (default 0,1: two processes on two
#          cores, as in issue 20; empty: no pinning)
#   PYTHON the Python that runs a checkout (default: the checkout's .venv, else python3)
# Each run writes into a temporary folder that is removed at the end, with any process this script started.
set -euo pipefail

steps=400
if [[ $# -gt 0 && $1 != "--" ]]; then steps=$1; shift; fi
if [[ $# -gt 0 && $1 == "--" ]]; then shift; fi
extra=("$@")
[[ $steps =~ ^[1-9][0-9]*$ ]] || { echo "contention.sh: STEPS must be a positive integer, got $steps" >&2; exit 2; }

here=$(cd "$(dirname "$0")/.." && pwd)
target=${DICO:-$here}
if [[ -d $target ]]; then
    [[ -d $target/src/dico ]] || { echo "contention.sh: $target is not a dico checkout (no src/dico)" >&2; exit 2; }
    python=${PYTHON:-}
    if [[ -z $python ]]; then
        if [[ -x $target/.venv/bin/python ]]; then python=$target/.venv/bin/python
        elif [[ -x $here/.venv/bin/python ]]; then python=$here/.venv/bin/python
        else python=python3; fi
    fi
    dico=(env "PYTHONPATH=$target/src" "$python" -m dico.cli)
else
    command -v "$target" >/dev/null || { echo "contention.sh: DICO=$target is neither a checkout nor a command" >&2; exit 2; }
    dico=("$target")
fi
cores=${CORES-0,1}
pin=()
if [[ -n $cores ]]; then pin=(taskset -c "$cores"); fi

work=$(mktemp -d "${TMPDIR:-/tmp}/dico-contention.XXXXXX")
others=()
cleanup() {
    for pid in "${others[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

train() {  # train RESULTS_DIR STEPS [flags]: the digits demo, quiet, no sample grid
    local results=$1 n=$2; shift 2
    # exec: a run started with `(train ...) &` is then the process $! names, so that stop() ends it, not a subshell
    exec "${pin[@]}" "${dico[@]}" train --results-dir "$results" --max-steps "$n" --no-progress --grid-classes 0 "$@"
}

steps_per_second() {  # the training speed in a results folder's log.jsonl: all steps over the summed window times
    python3 - "$1/log.jsonl" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
steps, seconds, previous = 0, 0.0, 0
for record in records:
    window = record["step"] - previous
    steps, seconds, previous = steps + window, seconds + window / record["steps_per_s"], record["step"]
print(f"{steps / seconds:.2f}")
EOF
}

measure() {  # measure NAME: one measured run; prints and returns (in $rate) its steps/s
    local name=$1 results=$work/$1
    echo "== $name: uptime$(uptime)"
    (train "$results" "$steps" "${extra[@]}") >"$results.out" 2>&1 || { cat "$results.out" >&2; exit 1; }
    rate=$(steps_per_second "$results")
    echo "== $name: $rate steps/s"
}

wait_for() {  # wait_for FILE PID: until the background run PID has written FILE (its training has started)
    local i
    for ((i = 0; i < 600; i++)); do
        [[ -e $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || { echo "contention.sh: the background run stopped:" >&2; cat "$work"/*.out >&2; exit 1; }
        sleep 0.2
    done
    echo "contention.sh: the background run did not start within 2 minutes" >&2; exit 1
}

stop() {  # stop PID: end a process this script started
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    others=()
}

echo "dico: ${dico[*]}; cores: ${cores:-all}; $steps steps; flags: ${extra[*]:-none}"
measure alone
alone=$rate

(train "$work/other" 1000000 "${extra[@]}") >"$work/other.out" 2>&1 &
others=($!)
wait_for "$work/other/config.yaml" "${others[0]}"
measure beside-dico-train
beside_train=$rate
stop "${others[0]}"

"${pin[@]}" python3 -c "while True: pass" &
others=($!)
measure beside-busy-loop
beside_loop=$rate
stop "${others[0]}"

python3 - "$alone" "$beside_train" "$beside_loop" <<'EOF'
import sys
alone, train, loop = map(float, sys.argv[1:])
print(f"slowdown beside a second dico train: {alone / train:.2f}x (goal: at most 2.5x)")
print(f"slowdown beside a busy loop: {alone / loop:.2f}x (goal: at most 2x)")
EOF
