"""What keeps a run from hanging forever: a per-rank hang watchdog and a check for stale build locks.

Hang watchdog. A rank stuck in a collective (a peer that died without closing its sockets, a NCCL
deadlock, a rank blocked on I/O while the others wait in an all-reduce) otherwise waits forever: the
job holds its machines and prints nothing. The training loop "beats" with (step, phase) at each phase
change (`beat(step, "forward/backward")`); a daemon thread per rank watches the age of the last beat,
and another publishes it to the torch.distributed default store (the key-value store every rank
already talks to: its server runs on a thread of rank 0, so it answers while every main thread is
blocked in a collective; checked with gloo). When a beat is older than `--hang_timeout` seconds the
watchdog reads the other ranks' last beats, names the rank that is furthest behind, its step, phase
and for how long, and where the others wait, e.g.

    hang: rank 1 is at step 5 (data), no progress for 21 s; rank 0 waits at step 5 (forward/backward);
    the watchdog ended the run (--hang_timeout 20 ...)

records that line as the run's error (`errors.end_run`: once across ranks, printed last by launch.sh)
and ends its process (`os._exit(1)`), so the launcher stops the other ranks. Every blocked rank's
watchdog fires; the first one to record the message wins and the others exit quietly. The threads
never touch the store from the watching thread (a store that stops answering cannot stop it), and the
read of the other ranks' beats is bounded by a few seconds, after which the message names only this
rank.

Stale build lock. DeepSpeed JIT-builds its C++ ops (on CPU `deepspeed_shm_comm`, at
`deepspeed.init_distributed`) through `torch.utils.cpp_extension.load`, which serializes builds with a
`lock` file in the extension's build folder (`FileBaton`: created with O_EXCL, removed when the build
ends; the others poll until it is gone). A build that was killed leaves the file behind and every later
start waits for it forever. `check_extension_locks()` runs before `deepspeed.init_distributed`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from .errors import UserError

START, DATA, FORWARD_BACKWARD, OPTIMIZER_STEP = "start-up", "data", "forward/backward", "optimizer step"
LOSS_REDUCE, EVALUATION, CHECKPOINT_SAVE = "loss all-reduce", "evaluation", "checkpoint save"
PHASES = (START, DATA, FORWARD_BACKWARD, OPTIMIZER_STEP, LOSS_REDUCE, EVALUATION, CHECKPOINT_SAVE)  # in step order

PEER_READ_SECONDS = 5.0  # how long a hang report waits for the other ranks' beats from the store


def _progress_key(step, phase) -> tuple:
    """Order of positions: a rank with a smaller key is behind (start-up before step 1)."""
    return (-1 if step is None else step, PHASES.index(phase) if phase in PHASES else len(PHASES))


def _position(step, phase) -> str:
    return "in start-up" if step is None else f"at step {step} ({phase})"


def _ranks(ranks) -> str:
    """[0, 1, 3, 4, 5, 8] -> '0, 1, 3-5, 8' (runs of three or more as ranges)."""
    out, ranks = [], sorted(ranks)
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.extend([f"{ranks[i]}-{ranks[j]}"] if j - i >= 2 else map(str, ranks[i:j + 1]))
        i = j + 1
    return ", ".join(out)


def hang_message(rank: int, world: int, timeout: float, beats: dict) -> str:
    """The report of a hang seen by `rank`: `beats` maps ranks to (step, phase, seconds since that beat),
    or None where unknown, and holds at least `rank` itself. The ranks furthest behind are the stuck
    ones; the others wait for them (in a collective)."""
    known = {r: b for r, b in beats.items() if b is not None}
    behind = min(_progress_key(b[0], b[1]) for b in known.values())
    stuck = sorted(r for r, b in known.items() if _progress_key(b[0], b[1]) == behind)
    step, phase, _ = known[stuck[0]]
    age = max(known[r][2] for r in stuck)
    if len(stuck) == 1:
        who = f"rank {stuck[0]} is"
    else:
        who = f"ranks {_ranks(stuck)} are" + (" all" if len(stuck) == world else "")
    parts = [f"{who} {_position(step, phase)}, no progress for {age:.0f} s"]
    groups: dict[tuple, list] = {}
    for r, b in known.items():
        if r not in stuck:
            groups.setdefault((b[0], b[1]), []).append(r)
    for (s, p), ranks in sorted(groups.items(), key=lambda item: _progress_key(*item[0])):
        parts.append(f"{'rank' if len(ranks) == 1 else 'ranks'} {_ranks(ranks)} "
                     f"{'waits' if len(ranks) == 1 else 'wait'} {_position(s, p)}")
    missing = sorted(set(range(world)) - set(known))
    if missing and len(missing) == world - 1 and rank in known:
        parts.append("the other ranks' positions could not be read")
    elif missing:
        parts.append(f"{'rank' if len(missing) == 1 else 'ranks'} {_ranks(missing)}: position unknown")
    return ("hang: " + "; ".join(parts) + f"; the watchdog ended the run (--hang_timeout {timeout:g}: raise it "
            "if a step, an evaluation, a checkpoint save or the start-up can take longer)")


class Watchdog:
    """Watches one rank's beats (see the module docstring). `clock` (monotonic) times this rank's own
    beat, `wall` stamps the published beats (so other ranks can age them); `on_hang(message)` is called
    once, from the watching thread, when the last beat is older than `timeout` (default: record the
    message and end the process). `store`: a torch.distributed Store where the ranks publish their
    beats, or None (single process, or no default store)."""

    def __init__(self, timeout: float, rank: int = 0, world: int = 1, *, store=None, on_hang=None,
                 clock=time.monotonic, wall=time.time, poll: float | None = None):
        self.timeout, self.rank, self.world, self.store = float(timeout), rank, world, store
        self.on_hang = on_hang or _end_run
        self.clock, self.wall = clock, wall
        self.poll = poll if poll is not None else min(max(self.timeout / 10, 0.05), 5.0)
        self._beat = (None, START, clock(), wall())  # step, phase, clock time, wall time
        self._published = None
        self._stop = threading.Event()
        self.fired: str | None = None

    def beat(self, step, phase: str) -> None:
        """This rank is now at `step` (None: start-up) in `phase`. One tuple assignment (atomic)."""
        self._beat = (step, phase, self.clock(), self.wall())

    def start(self) -> Watchdog:
        if self.timeout > 0:
            threading.Thread(target=self._watch, name="suji-watchdog", daemon=True).start()
            if self.store is not None and self.world > 1:
                threading.Thread(target=self._publish_loop, name="suji-watchdog-store", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> str | None:
        """The hang report when this rank's last beat is older than the timeout, else None."""
        step, phase, at, _ = self._beat
        age = self.clock() - at
        if self.timeout <= 0 or age <= self.timeout:
            return None
        beats = {**self.peer_beats(), self.rank: (step, phase, age)}
        return hang_message(self.rank, self.world, self.timeout, beats)

    def publish(self) -> None:
        """Put this rank's last beat in the store (when it changed)."""
        step, phase, _, wall = self._beat
        if self.store is None or self._published == (step, phase, wall):
            return
        self.store.set(str(self.rank), json.dumps({"step": step, "phase": phase, "time": wall}))
        self._published = (step, phase, wall)

    def peer_beats(self) -> dict:
        """{rank: (step, phase, age) or None} of the other ranks, as published; waits at most
        PEER_READ_SECONDS (a store that does not answer leaves the rest unknown)."""
        if self.store is None or self.world <= 1:
            return {}
        found: dict = {}

        def read():
            for r in range(self.world):
                if r == self.rank:
                    continue
                try:
                    if not self.store.check([str(r)]):
                        continue
                    beat = json.loads(self.store.get(str(r)))
                except Exception:  # noqa: BLE001 - the store's server (rank 0) may be gone
                    return
                found[r] = (beat["step"], beat["phase"], max(0.0, self.wall() - beat["time"]))

        reader = threading.Thread(target=read, name="suji-watchdog-peers", daemon=True)
        reader.start()
        reader.join(PEER_READ_SECONDS)
        return dict(found)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            message = self.check()
            if message and not self._stop.is_set():
                self.fired = message
                self.on_hang(message)
                return

    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - the store is gone: the hang report names only this rank
                return
            self._stop.wait(self.poll)


def _end_run(message: str) -> None:
    from .errors import end_run

    end_run(message)


_CURRENT: Watchdog | None = None


def start(timeout: float, rank: int = 0, world: int = 1) -> Watchdog:
    """Start this process's watchdog (replacing a previous one), publishing through the default store
    of torch.distributed when it is initialized."""
    global _CURRENT
    stop()
    store = None
    if world > 1 and timeout > 0:
        import torch.distributed as dist

        try:
            store = dist.PrefixStore("suji_watchdog", dist.distributed_c10d._get_default_store())
        except Exception:  # noqa: BLE001 - no default store (a private API that may move): own rank only
            store = None
    _CURRENT = Watchdog(timeout, rank, world, store=store).start()
    return _CURRENT


def stop() -> None:
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.stop()
        _CURRENT = None


def beat(step, phase: str) -> None:
    """Tell the running watchdog (if any) that this rank is now at `step` in `phase`; long loops outside
    the training step (an evaluation over many batches) may call it to show they are alive."""
    if _CURRENT is not None:
        _CURRENT.beat(step, phase)


# --- stale torch-extension build locks ---

STALE_LOCK_ENV = "SUJI_STALE_LOCK_SECONDS"
STALE_LOCK_SECONDS = 300.0  # a real build of DeepSpeed's CPU op takes about a minute
QUIET_LOCK_SECONDS = 5.0  # younger locks are the usual moment of a start that checks a built op: say nothing


def extensions_root() -> Path:
    """Where torch.utils.cpp_extension builds JIT extensions (as its `_get_build_directory`):
    `$TORCH_EXTENSIONS_DIR`, else `<user cache>/torch_extensions/py<version>_<cpu|cuXY|rocmXY>`."""
    if os.environ.get("TORCH_EXTENSIONS_DIR") is not None:
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def _building_in(folder: Path) -> bool:
    """Whether a local process works in `folder` (torch runs ninja and the compiler with that cwd)."""
    target = os.path.realpath(folder)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return False
    for pid in pids:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == target or cwd.startswith(target + os.sep):
            return True
    return False


def check_extension_locks(root: Path | None = None, *, stale_after: float | None = None, now: float | None = None,
                          log=None) -> None:
    """A build lock under the extensions root older than `stale_after` seconds (`$SUJI_STALE_LOCK_SECONDS`,
    default 300) with no local process building in its folder is a UserError naming the file; a
    younger one (over a few seconds) is reported through `log` and left to torch, which waits for it."""
    root = extensions_root() if root is None else Path(root)
    if stale_after is None:
        try:
            stale_after = float(os.environ.get(STALE_LOCK_ENV) or STALE_LOCK_SECONDS)
        except ValueError:
            raise UserError(f"${STALE_LOCK_ENV}={os.environ[STALE_LOCK_ENV]!r}: expected a number of seconds") from None
    try:
        locks = sorted(root.glob("*/lock"))
    except OSError:
        return
    for lock in locks:
        try:
            age = (time.time() if now is None else now) - lock.stat().st_mtime
        except OSError:  # released meanwhile
            continue
        if age >= stale_after and not _building_in(lock.parent):
            raise UserError(
                f"{lock}: torch-extension build lock left {age:.0f} s ago, probably by a build that was killed; every "
                f"start waits for it forever: remove it if no build is running (rm {lock}), then run again")
        if age >= QUIET_LOCK_SECONDS and log is not None:
            log(f"{lock}: a torch-extension build started {age:.0f} s ago holds this lock; waiting for it "
                "(remove the file if no build is running)")
