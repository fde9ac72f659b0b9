"""Fault injection for the reliability tests: a process killed mid-step or mid-save, as a lost node or
the OOM killer would. Switched on by environment variables, never by options, so no command line can
trigger one by accident; each fires on the first attempt of a run only, so a restarted run (launch.sh's
SUJI_MAX_RESTARTS, torchrun's --max-restarts) goes past the point where the first one died.

    SUJI_FAULT_KILL=STEP:RANK        SIGKILL rank RANK in step STEP, after backward, before the optimizer step
    SUJI_FAULT_KILL=STEP:RANK:save   SIGKILL rank RANK while saving checkpoint-STEP, after its shard is
                                     written and before the checkpoint is complete
"""

from __future__ import annotations

import os
import signal
import sys

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
