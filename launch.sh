#!/usr/bin/env bash
# Set up (once) and launch Suji jobs.
#   ./launch.sh test [pytest args]           run the test suite
#   ./launch.sh pretrain [CONFIG] [args...]  pretrain (default: tiny RoFormer MLM on the embedded corpus)
#   ./launch.sh finetune TASK [args...]      run finetune/TASK.py
#   ./launch.sh python [args...]             python inside the project environment
#   ./launch.sh newest [pytest args]         the parity + generation tests (-m upstream) on the newest versions
#                                            pyproject.toml allows, in .venv-newest (CI runs it)
#   ./launch.sh lock                         refresh constraints.txt: newest allowed versions, whole suite, freeze
# Environment: SUJI_VENV (default .venv beside this script), SUJI_CPU_PROCS (CPU processes, default 2),
# SUJI_HOSTFILE (DeepSpeed hostfile for several GPU nodes), SUJI_MASTER_PORT (default 29500),
# SUJI_NEWEST_VENV (default .venv-newest).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SUJI_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"

CONSTRAINTS="$ROOT/constraints.txt"  # the exact versions the test suite passed on (./launch.sh lock)
KEY_PACKAGES="torch deepspeed transformers datasets tokenizers safetensors accelerate huggingface_hub numpy"

make_venv() {
    if [ ! -x "$1/bin/python" ]; then
        "$PYTHON_BIN" -c 'import sys; assert sys.version_info >= (3, 10), "Suji needs Python >= 3.10"'
        "$PYTHON_BIN" -m venv "$1"
    fi
}

# The lock was made on one Python (its first line says which); another Python installs from the ranges.
lock_args() {
    [ -f "$CONSTRAINTS" ] || return 0
    local want have
    want="$(sed -n 's/^# python \([0-9.]*\).*/\1/p' "$CONSTRAINTS" | head -1)"
    have="$("$1/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ -n "$want" ] && [ "$want" != "$have" ]; then
        echo "[launch] constraints.txt was tested on Python $want, this is $have: installing from pyproject.toml's ranges" >&2
        return 0
    fi
    echo "-c $CONSTRAINTS"
}

setup() {
    make_venv "$VENV"
    # Reinstall only when the dependencies or the lock changed (the stamp holds both files' hash).
    local want have
    want="$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" 2>/dev/null | sha256sum | cut -d' ' -f1)"
    have="$(cat "$VENV/.suji-installed" 2>/dev/null || true)"
    if [ "$want" != "$have" ]; then
        echo "[launch] installing Suji and the tested versions (constraints.txt) into $VENV ..." >&2
        # shellcheck disable=SC2046
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]" $(lock_args "$VENV") >&2
        echo "$want" > "$VENV/.suji-installed"
    fi
}

key_versions() {  # one line: the versions of the packages Suji's parity depends on
    "$1/bin/python" - $KEY_PACKAGES <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"
print(", ".join(f"{n} {v(n)}" for n in sys.argv[1:]) + f", python {sys.version.split()[0]}")
PY
}

# What moved since the lock: "transformers 5.24.0 -> 5.25.0, ..." (empty when nothing did).
moved_since_lock() {
    [ -f "$CONSTRAINTS" ] || return 0
    "$1/bin/python" - "$CONSTRAINTS" <<'PY'
import re, sys
from importlib.metadata import distributions
locked = {}
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.match(r"([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
    if m:
        locked[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
moved = []
for d in distributions():
    name = re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
    if name in locked and locked[name] != d.version.split("+")[0]:
        moved.append(f"{name} {locked[name]} -> {d.version}")
print(", ".join(sorted(moved)))
PY
}

# A second environment with the newest versions pyproject.toml allows (no lock), for `newest` and `lock`.
setup_newest() {
    NEWEST="${SUJI_NEWEST_VENV:-$ROOT/.venv-newest}"
    make_venv "$NEWEST"
    echo "[launch] installing the newest versions pyproject.toml allows into $NEWEST ..." >&2
    "$NEWEST/bin/python" -m pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager \
        -e "$ROOT[dev]" >&2
    echo "[launch] newest stack: $(key_versions "$NEWEST")" >&2
}

num_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; else echo 0; fi
}

# Launch a training script on every GPU, or on CPU with SUJI_CPU_PROCS processes over gloo.
distributed() {
    local script="$1"; shift
    local gpus; gpus="$(num_gpus)"
    export PYTHONUNBUFFERED=1
    local port=()  # concurrent jobs on one machine need distinct ports (DeepSpeed's default is 29500)
    [ -n "${SUJI_MASTER_PORT:-}" ] && port=(--master_port "$SUJI_MASTER_PORT")
    if [ "$gpus" -gt 0 ]; then
        local hostfile=()
        [ -n "${SUJI_HOSTFILE:-}" ] && hostfile=(--hostfile "$SUJI_HOSTFILE")
        run_ranks "$VENV/bin/deepspeed" "${hostfile[@]}" "${port[@]}" --num_gpus "$gpus" "$script" "$@"
    fi
    # CPU: one thread per process (the launcher does not set it; without it training is ~4x slower).
    export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu
    run_ranks "$VENV/bin/deepspeed" "${port[@]}" --num_gpus "${SUJI_CPU_PROCS:-2}" "$script" "$@"
}

# Run the launcher and end with the failing rank's one-line message, after the launcher's own exit
# lines (suji_models/training/errors.py records it in $SUJI_ERROR_FILE). SIGTERM / SIGINT go on to the
# launcher, which stops the ranks. A run that fails for any reason but a user error (a killed or hung
# rank, a lost node, a crash) is started again up to SUJI_MAX_RESTARTS times (default 0); it resumes
# from the newest complete checkpoint (--resume is on by default), so only the steps since it are redone.
run_ranks() {
    local attempt=0 status
    SUJI_ERROR_FILE="$(mktemp "${TMPDIR:-/tmp}/suji-error.XXXXXX")"
    export SUJI_ERROR_FILE SUJI_ERROR_PRINTED_BY_LAUNCHER=1
    trap 'rm -f "$SUJI_ERROR_FILE"' EXIT
    while :; do
        rm -f "$SUJI_ERROR_FILE"  # the first failing rank creates it
        export SUJI_RESTART="$attempt"
        status=0
        run_once "$@" || status=$?
        [ "$status" -ne 0 ] && [ "$status" -ne 130 ] && [ "$status" -ne 143 ] || exit "$status"
        [ "$(sed -n 2p "$SUJI_ERROR_FILE" 2>/dev/null)" != "user" ] || exit "$status"  # it would fail again
        [ "$attempt" -lt "${SUJI_MAX_RESTARTS:-0}" ] || exit "$status"
        attempt=$((attempt + 1))
        echo "[launch] the run failed (exit $status); restart $attempt of $SUJI_MAX_RESTARTS from the newest" \
             "complete checkpoint" >&2
        sleep "${SUJI_RESTART_DELAY:-2}"
    done
}

run_once() {
    local errfile="$SUJI_ERROR_FILE" status pid
    # Its own process group, so that a stop reaches every process: the single-node `deepspeed` runner has
    # no SIGTERM handler and would die alone, leaving the ranks running. Ranks exit quietly on SIGTERM
    # (and remove their shm buffers); SIGINT is forwarded as SIGTERM, which the runner takes without a traceback.
    local group=() stop=""
    command -v setsid >/dev/null 2>&1 && group=(setsid)
    "${group[@]}" "$@" &
    pid=$!
    trap 'stop=143; kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null' TERM
    trap 'stop=130; kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null' INT
    status=0
    wait "$pid" || status=$?
    while kill -0 "$pid" 2>/dev/null; do  # woken by a forwarded signal: wait for the launcher to finish
        status=0
        wait "$pid" || status=$?
    done
    [ -z "$stop" ] || status="$stop"
    if [ -s "$errfile" ]; then
        echo "error: $(head -n 1 "$errfile" | head -c 4000)" >&2
        [ "$status" -ne 0 ] || status=1
    fi
    return "$status"
}

cmd="${1:-help}"; shift || true
case "$cmd" in
    test)
        setup
        cd "$ROOT"
        exec "$VENV/bin/python" -m pytest -q "$@" ;;
    pretrain)
        setup
        cd "$ROOT"
        config=(--config configs/pretrain/roformer_tiny.json)  # the default: tiny RoFormer, embedded corpus
        if [ $# -gt 0 ] && [[ "$1" != --* ]]; then config=(--config "$1"); shift; fi
        distributed pretrain/run_mlm.py "${config[@]}" "$@" ;;
    finetune)
        setup
        cd "$ROOT"
        task="${1:?usage: launch.sh finetune TASK [args...]}"; shift
        [ -f "finetune/$task.py" ] || { echo "no recipe finetune/$task.py; have: $(ls finetune/*.py 2>/dev/null | xargs -n1 basename | sed 's/\.py$//' | tr '\n' ' ')" >&2; exit 2; }
        distributed "finetune/$task.py" "$@" ;;
    python)
        setup
        exec "$VENV/bin/python" "$@" ;;
    setup)
        setup ;;
    newest)
        # CI: parity and generation against the newest releases; a failure names what moved since the lock.
        setup_newest
        cd "$ROOT"
        status=0
        "$NEWEST/bin/python" -m pytest -q -m upstream -p no:cacheprovider "$@" || status=$?
        if [ "$status" -ne 0 ]; then
            echo "error: the parity / generation tests fail on the newest versions pyproject.toml allows" \
                 "($(key_versions "$NEWEST")); moved since constraints.txt: $(moved_since_lock "$NEWEST")" >&2
        fi
        exit "$status" ;;
    lock)
        # Newest allowed versions, the whole default suite on them, then their exact versions -> constraints.txt.
        setup_newest
        cd "$ROOT"
        "$NEWEST/bin/python" -m pytest -q -p no:cacheprovider "$@"
        {
            echo "# python $("$NEWEST/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
                 "- the exact versions './launch.sh test' passed on ($(date -u +%Y-%m-%d), $(uname -sm))."
            echo "# launch.sh installs with them (pip -c); refresh with ./launch.sh lock. Local labels (+cpu) dropped."
            "$NEWEST/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | sed 's/+[A-Za-z0-9.]*$//'
        } > "$CONSTRAINTS.tmp"
        mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"
        echo "[launch] wrote $CONSTRAINTS ($(grep -c '==' "$CONSTRAINTS") pins); moved: $(moved_since_lock "$VENV")" >&2 ;;
    help|-h|--help)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' ;;
    *)
        echo "unknown command '$cmd'" >&2; sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
