"""Guards against runs that never end and runs that silently stop learning:

- the hang watchdog (`suji_models/training/watchdog.py`): in-process with a fake clock and short
  timeouts, and end to end with a rank that hangs in a real 2-process DeepSpeed run;
- the stale torch-extension build lock, which otherwise makes every start wait forever;
- the fp16 loss-scale floor warning, against DeepSpeed's own loss-scaler classes (fp16 needs a GPU)."""

import glob
import os
import re
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from suji_models.training import errors, faults, guards, watchdog

from .conftest import REPO_ROOT
from .test_error_tails import last_line, no_buffers_left, pretrain
from .test_pretrain_e2e import CLUE, COMMON, free_port, launch


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# --- hang watchdog, in-process ---

def test_hang_message_names_the_rank_behind_and_where_the_others_wait():
    message = watchdog.hang_message(0, 2, 20, {0: (7, "optimizer step", 20.4), 1: (7, "forward/backward", 21.2)})
    assert message.startswith("hang: rank 1 is at step 7 (forward/backward), no progress for 21 s; "
                              "rank 0 waits at step 7 (optimizer step); the watchdog ended the run (--hang_timeout 20:")
    # every rank in the same collective: nobody is behind
    assert watchdog.hang_message(1, 2, 20, {0: (3, "forward/backward", 25), 1: (3, "forward/backward", 25)}) \
        .startswith("hang: ranks 0, 1 are all at step 3 (forward/backward), no progress for 25 s; the watchdog")
    # ten ranks: grouped by position, runs of ranks as ranges; one rank never published its beat
    beats = {r: (9, "loss all-reduce", 30) for r in range(10)}
    beats.update({2: (9, "data", 31), 5: (8, "checkpoint save", 40), 6: None})
    assert watchdog.hang_message(0, 10, 20, beats).startswith(
        "hang: rank 5 is at step 8 (checkpoint save), no progress for 40 s; rank 2 waits at step 9 (data); "
        "ranks 0, 1, 3, 4, 7-9 wait at step 9 (loss all-reduce); rank 6: position unknown; ")
    # the store could not be read: own rank only
    assert watchdog.hang_message(1, 2, 20, {1: (None, "start-up", 22)}).startswith(
        "hang: rank 1 is in start-up, no progress for 22 s; the other ranks' positions could not be read; ")


def test_watchdog_fires_after_the_timeout_and_reads_the_other_ranks_beats():
    clock = FakeClock()
    store = dist.HashStore()  # the same Store interface as the default TCP store
    dogs = [watchdog.Watchdog(20, r, 2, store=dist.PrefixStore("suji_watchdog", store), clock=clock, wall=clock)
            for r in (0, 1)]
    for dog in dogs:
        dog.beat(4, watchdog.LOSS_REDUCE)
    clock.t += 1
    dogs[1].beat(5, watchdog.DATA)  # rank 1 stops here
    clock.t += 0.5
    dogs[0].beat(5, watchdog.DATA)
    clock.t += 0.5
    dogs[0].beat(5, watchdog.FORWARD_BACKWARD)  # rank 0 then waits in the gradient all-reduce
    for dog in dogs:
        dog.publish()
    clock.t += 18.2
    assert dogs[0].check() is None and dogs[1].check() is None  # rank 0's beat is 18.2 s old, rank 1's 19.2
    clock.t += 2
    expected = "hang: rank 1 is at step 5 (data), no progress for 21 s; rank 0 waits at step 5 (forward/backward);"
    assert dogs[0].check().startswith(expected) and dogs[1].check().startswith(expected)  # either rank says the same
    dogs[0].beat(6, watchdog.DATA)  # a beat resets the timeout
    assert dogs[0].check() is None
    assert watchdog.Watchdog(0, clock=clock).check() is None  # 0: off


def test_watchdog_thread_calls_on_hang_once_unless_beaten_or_stopped():
    fired = []
    dog = watchdog.Watchdog(0.4, on_hang=fired.append, poll=0.02).start()
    for step in range(1, 11):  # beats every 0.1 s: never fires
        dog.beat(step, watchdog.DATA)
        time.sleep(0.1)
    assert fired == []
    deadline = time.monotonic() + 10
    while not fired and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert len(fired) == 1 and fired[0].startswith("hang: rank 0 is at step 10 (data), no progress for 0 s;")
    stopped = []
    dog = watchdog.Watchdog(0.2, on_hang=stopped.append, poll=0.02).start()
    dog.stop()
    time.sleep(0.6)
    assert stopped == []


def test_a_hang_is_recorded_as_the_run_error_and_ends_the_process(tmp_path):
    """The default `on_hang`: the message goes through errors.end_run (the file launch.sh prints last)
    and the process exits 1 although its main thread is blocked."""
    env = {**os.environ, errors.ERROR_FILE_ENV: str(tmp_path / "error"), "RANK": "0"}
    env.pop(errors.PRINTED_BY_LAUNCHER_ENV, None)
    code = ("from suji_models.training import watchdog; import time; "
            "watchdog.start(0.5).beat(3, watchdog.FORWARD_BACKWARD); time.sleep(60)")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and time.monotonic() - started < 50, out.stderr[-2000:]
    recorded, kind = (tmp_path / "error").read_text().splitlines()
    assert recorded.startswith("hang: rank 0 is at step 3 (forward/backward), no progress for ")
    assert kind == "crash"  # not a user mistake: a restart may get past it
    assert out.stderr.strip().splitlines()[-1] == f"error: {recorded}"


# --- hang watchdog, end to end ---

def test_a_hung_rank_ends_the_run_with_a_report(tmp_path, monkeypatch):
    """Rank 1 sleeps forever at the start of step 5; rank 0 blocks in the gradient all-reduce. With
    --hang_timeout 20 the run ends (instead of hanging) with one report naming rank 1, step 5 and where
    rank 0 waits, read through the default store while rank 0's main thread is blocked in gloo."""
    monkeypatch.setenv(faults.HANG_FAULT_ENV, "5:1")
    port = free_port()
    started = time.monotonic()
    code, log = launch("pretrain/run_mlm.py", "--train_file", CLUE, "--max_steps", 8, "--output_dir", tmp_path / "run",
                       *COMMON, "--log_steps", 1, "--hang_timeout", 20, port=port, timeout=240)
    elapsed = time.monotonic() - started
    assert code != 0, log[-3000:]
    reports = [line for line in log.splitlines() if line.startswith("error: hang: ")]
    assert len(reports) == 1, log[-3000:]
    assert reports[0].startswith("error: hang: rank 1 is at step 5 (data), no progress for 2"), reports[0]
    assert "rank 0 waits at step 5 (forward/backward)" in reports[0], reports[0]
    assert "step      4 | loss" in log and "step      5 | loss" not in log
    assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*"), "shared-memory buffers left behind"
    print(f"hung run ended after {elapsed:.0f} s: {reports[0][:160]}")


# --- stale torch-extension build lock ---

def _lock(root, name="deepspeed_shm_comm", age=0.0):
    lock = root / name / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    os.utime(lock, (time.time() - age, time.time() - age))
    return lock


def test_extensions_root_is_torchs(tmp_path, monkeypatch):
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # torch's default root follows it
    assert watchdog.extensions_root() == type(watchdog.extensions_root())(_get_build_directory("x", False)).parent
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    assert str(watchdog.extensions_root()) == os.path.dirname(_get_build_directory("x", False))


def test_stale_lock_is_a_user_error_and_a_young_one_is_left_to_torch(tmp_path, monkeypatch):
    monkeypatch.delenv(watchdog.STALE_LOCK_ENV, raising=False)
    lines = []
    watchdog.check_extension_locks(tmp_path, log=lines.append)  # no lock
    young = _lock(tmp_path, "fused_adam", age=1)  # a start that is checking a built op right now: quiet
    watchdog.check_extension_locks(tmp_path, log=lines.append)
    assert lines == []
    os.utime(young, (time.time() - 60,) * 2)  # a build running for a minute: said, and waited for
    watchdog.check_extension_locks(tmp_path, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith(f"{young}: a torch-extension build started 60 s ago holds this lock")
    stale = _lock(tmp_path, age=400)
    with pytest.raises(errors.UserError, match=rf"^{re.escape(str(stale))}: torch-extension build lock left 400 s ago, "
                                               rf".*remove it if no build is running \(rm {re.escape(str(stale))}\)"):
        watchdog.check_extension_locks(tmp_path)
    stale.unlink()
    monkeypatch.setenv(watchdog.STALE_LOCK_ENV, "30")  # the threshold from the environment
    with pytest.raises(errors.UserError, match=rf"^{re.escape(str(young))}: torch-extension build lock left 60 s ago"):
        watchdog.check_extension_locks(tmp_path)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # the default root is $TORCH_EXTENSIONS_DIR
    with pytest.raises(errors.UserError, match="fused_adam/lock"):
        watchdog.check_extension_locks()


def test_stale_lock_fails_fast_naming_the_file(tmp_path, monkeypatch):
    """`./launch.sh pretrain` with a lock left by a killed build: instead of waiting forever in
    deepspeed.init_distributed, the run ends at once with the file in its last line."""
    lock = _lock(tmp_path / "ext", age=3600)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    started = time.monotonic()
    code, log, port = pretrain("--output_dir", tmp_path / "run", "--max_steps", 2, timeout=180)
    elapsed = time.monotonic() - started
    assert code != 0, log[-3000:]
    assert re.match(rf"error: {re.escape(str(lock))}: torch-extension build lock left 36\d\d s ago, .* remove it if no "
                    rf"build is running \(rm {re.escape(str(lock))}\)", last_line(log)), log[-3000:]
    assert log.count(f"{lock}: torch-extension build lock") == 1 and "Traceback" not in log, log[-3000:]
    assert lock.exists() and no_buffers_left(port)
    print(f"stale lock reported after {elapsed:.0f} s")


# --- fp16 loss-scale floor ---

def _zero_optimizer(cls, init_scale):
    """A ZeRO optimizer object with DeepSpeed's own loss scaler (what its constructor builds for fp16
    with dynamic scaling), without the rest of the constructor (which needs a GPU)."""
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler

    optimizer = cls.__new__(cls)
    optimizer.custom_loss_scaler, optimizer.external_loss_scale = False, None
    optimizer.loss_scaler = CreateLossScaler(
        dtype=torch.half, static_loss_scale=1.0, dynamic_scaling=True,
        dynamic_loss_args={"init_scale": init_scale, "scale_window": 2, "min_scale": 1, "delayed_shift": 1,
                           "consecutive_hysteresis": False})
    return optimizer, optimizer.loss_scaler.update_scale


def _fp16_optimizer(cls, init_scale):
    """FP16_Optimizer / FP16_UnfusedOptimizer (no ZeRO) with DeepSpeed's LossScaleConfig, stepped through
    their own `_update_scale`."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaleConfig

    optimizer = cls.__new__(cls)
    optimizer.custom_loss_scaler, optimizer.external_loss_scale, optimizer.verbose = False, None, False
    optimizer.loss_scale_config = LossScaleConfig(
        low_precision_dtype=torch.half, dynamic_loss_scale=True, static_loss_scale=1.0,
        dynamic_loss_args={"init_scale": init_scale, "scale_window": 2, "min_scale": 1})
    return optimizer, lambda overflow: cls._update_scale(optimizer, overflow)


@pytest.mark.parametrize("kind", ["zero1_2", "zero3", "fp16_fused", "fp16_unfused"])
def test_loss_scale_floor_is_found_and_warned_once_per_fall(kind, monkeypatch, capsys):
    from deepspeed.runtime.fp16 import loss_scaler
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    monkeypatch.setattr(loss_scaler.dist, "get_rank", lambda *a, **k: 0)  # its log line asks for the rank
    make, cls = {"zero1_2": (_zero_optimizer, DeepSpeedZeroOptimizer),
                 "zero3": (_zero_optimizer, DeepSpeedZeroOptimizer_Stage3),
                 "fp16_fused": (_fp16_optimizer, FP16_Optimizer),
                 "fp16_unfused": (_fp16_optimizer, FP16_UnfusedOptimizer)}[kind]
    optimizer, update = make(cls, 16.0)
    assert guards.loss_scale_and_floor(optimizer) == (16.0, 1.0)
    assert optimizer.loss_scale == 16.0  # the optimizer's own view agrees
    floor = guards.LossScaleFloor(rank=0)
    no_zero = kind.startswith("fp16")
    # 16 -> 8 -> 4 -> 2 -> 1 (the floor; without ZeRO one more overflow stays there), three clean steps
    # (a scale window of 2) double it to 2, one overflow brings it back to the floor
    overflows = [True] * 4 + [True] * no_zero + [False] * 3 + [True]
    warnings, scales = [], []
    for step, overflow in enumerate(overflows, 1):
        update(overflow)
        warnings.append(floor.check(step, optimizer))
        scales.append(guards.loss_scale_and_floor(optimizer)[0])
    assert scales == [8, 4, 2, 1] + [1] * no_zero + [1, 1, 2, 1], scales
    expected_at = [4, 9] if no_zero else [4, 8]  # warned when it reaches the floor, and after it falls back
    assert [i + 1 for i, w in enumerate(warnings) if w] == expected_at, warnings
    assert warnings[expected_at[0] - 1].startswith(f"warning: step {expected_at[0]}: the fp16 loss scale reached its "
                                                   "floor (1, DeepSpeed's fp16.min_loss_scale)")
    assert capsys.readouterr().out.count("loss scale reached its floor") == 2  # rank 0 prints them
    if not kind.startswith("fp16"):  # ZeRO's scaler refuses to go below its floor: DeepSpeed ends the run
        with pytest.raises(Exception, match="loss scale already at minimum"):
            update(True)


def test_loss_scale_without_dynamic_scaling():
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler, LossScaleConfig

    assert guards.loss_scale_and_floor(LossScaleConfig(torch.bfloat16, True, 1.0, None)) == (None, None)  # bf16: none
    assert guards.loss_scale_and_floor(LossScaleConfig(torch.half, False, 128.0, None)) == (128.0, None)  # static
    assert guards.loss_scale_and_floor(CreateLossScaler(torch.half, 64.0, False, None)) == (64.0, None)
    assert guards.loss_scale_and_floor(object()) == (None, None)
    silent = guards.LossScaleFloor(rank=1)
    static = CreateLossScaler(torch.half, 1.0, False, None)
    assert silent.check(1, static) is None  # a static scale of 1 is no floor
