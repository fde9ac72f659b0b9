#!/usr/bin/env bash
# Set up (once) and launch Suji jobs.
#   ./launch.sh test [pytest args]           run the test suite
#   ./launch.sh pretrain [CONFIG] [args...]  pretrain (default: tiny RoFormer MLM on the embedded corpus)
#   ./launch.sh finetune TASK [args...]      run finetune/TASK.py
#   ./launch.sh python [args...]             python inside the project environment
# Environment: SUJI_VENV (default .venv beside this script), SUJI_CPU_PROCS (CPU processes, default 2),
# SUJI_HOSTFILE (DeepSpeed hostfile for several GPU nodes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SUJI_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON_BIN" -c 'import sys; assert sys.version_info >= (3, 10), "Suji needs Python >= 3.10"'
        "$PYTHON_BIN" -m venv "$VENV"
    fi
    # Reinstall only when the project's dependencies changed (the stamp holds pyproject's hash).
    local want have
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    have="$(cat "$VENV/.suji-installed" 2>/dev/null || true)"
    if [ "$want" != "$have" ]; then
        echo "[launch] installing Suji into $VENV (once) ..." >&2
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]" >&2
        echo "$want" > "$VENV/.suji-installed"
    fi
}

num_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; else echo 0; fi
}

# Launch a training script on every GPU, or on CPU with SUJI_CPU_PROCS processes over gloo.
distributed() {
    local script="$1"; shift
    local gpus; gpus="$(num_gpus)"
    export PYTHONUNBUFFERED=1
    if [ "$gpus" -gt 0 ]; then
        local hostfile=()
        [ -n "${SUJI_HOSTFILE:-}" ] && hostfile=(--hostfile "$SUJI_HOSTFILE")
        exec "$VENV/bin/deepspeed" "${hostfile[@]}" --num_gpus "$gpus" "$script" "$@"
    fi
    # CPU: one thread per process (the launcher does not set it; without it training is ~4x slower).
    export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu
    exec "$VENV/bin/deepspeed" --num_gpus "${SUJI_CPU_PROCS:-2}" "$script" "$@"
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
    help|-h|--help)
        sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' ;;
    *)
        echo "unknown command '$cmd'" >&2; sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
