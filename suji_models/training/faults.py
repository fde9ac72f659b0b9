"""Fault injection for the reliability tests: a process killed mid-step or mid-save (a lost node, the
OOM killer), a rank that hangs, a NaN loss, a full disk. Switched on by environment variables, never
by options, so no command line triggers one by accident; the kill and the hang fire on the first
attempt of a run only, so a restarted run (launch.sh's SUJI_MAX_RESTARTS, torchrun's --max-restarts)
goes past the point where the first one died.

    SUJI_FAULT_KILL=STEP:RANK        SIGKILL rank RANK in step STEP, after backward, before the optimizer step
    SUJI_FAULT_KILL=STEP:RANK:save   SIGKILL rank RANK while saving checkpoint-STEP, after its shard is
                                     written and before the checkpoint is complete
    SUJI_FAULT_HANG_AT=STEP:RANK     rank RANK sleeps forever at the start of step STEP (comma-separated pairs)
    SUJI_FAULT_NAN_LOSS_AT=3,4,5     the loss of these steps is NaN (every rank)
    SUJI_FAULT_ENOSPC_AT_SAVE=STEP   saving checkpoint-STEP fails with ENOSPC after the shards are written
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

KILL_ENV = "SUJI_FAULT_KILL"


def attempt() -> int:
    """0 for the first run, k for the k-th restart (set by launch.sh, or by torchrun's elastic agent)."""
    for name in ("SUJI_RESTART", "TORCHELASTIC_RESTART_COUNT"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _asked(where: str, step: int, rank: int) -> bool:
    spec = os.environ.get(KILL_ENV, "")
    if not spec or attempt() > 0:
        return False
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]):
        raise ValueError(f"{KILL_ENV}={spec!r}: expected STEP:RANK or STEP:RANK:save")
    kind = parts[2] if len(parts) == 3 else "step"
    return (int(parts[0]), int(parts[1]), kind) == (step, rank, where)


def kill_if_asked(where: str, step: int, rank: int) -> None:
    """SIGKILL this process if SUJI_FAULT_KILL names (step, rank) at `where` ("step" or "save")."""
    if _asked(where, step, rank):
        print(f"[fault] SIGKILL rank {rank} in {where} of step {step}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


NAN_FAULT_ENV = "SUJI_FAULT_NAN_LOSS_AT"  # tests: "3,4,5" makes the loss of these steps NaN


def nan_fault(step: int) -> bool:
    steps = os.environ.get(NAN_FAULT_ENV)
    return bool(steps) and str(step) in steps.split(",")


HANG_FAULT_ENV = "SUJI_FAULT_HANG_AT"  # tests: "5:1" makes rank 1 sleep forever at the start of step 5


def hang_if_asked(step: int, rank: int) -> None:
    """Fault injection for the watchdog's tests: sleep forever when $SUJI_FAULT_HANG_AT lists STEP:RANK
    (comma-separated pairs), on the first attempt of a run only (a restarted run goes past it)."""
    spec = os.environ.get(HANG_FAULT_ENV)
    if not spec or attempt() > 0:
        return
    if f"{step}:{rank}" in spec.replace(" ", "").split(","):
        print(f"[fault] rank {rank} hangs at the start of step {step}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


def nan_forward_backward(engine, batch):
    """Fault injection for the tests: the loss times NaN, so backward fills every gradient with NaN
    as a real overflow would."""
    loss = engine(**batch).loss * float("nan")
    engine.backward(loss)
    return loss


ENOSPC_ENV = "SUJI_FAULT_ENOSPC_AT_SAVE"


def enospc_if_asked(step: int) -> None:
    if os.environ.get(ENOSPC_ENV) == str(step):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"checkpoint-{step} (fault injected by {ENOSPC_ENV})")
