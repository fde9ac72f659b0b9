"""Restarts and world-size changes, end to end through `./launch.sh pretrain` with CPU processes.

A rank is SIGKILLed mid-step or mid-save (SUJI_FAULT_KILL, see suji_models/training/faults.py); launch.sh
restarts the run (SUJI_MAX_RESTARTS), which resumes from the newest complete checkpoint. The run must end
with the same weights and per-step losses as an uninterrupted one, and the per-rank sample logs
(--log_samples) must show that the steps after that checkpoint were redone with exactly the same rows
and that no row was skipped or seen twice. A run resumed on another number of processes keeps the global
batch and must continue the same row order with losses within fp32 tolerance."""

import os
import subprocess
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file

from suji_models.training.data import RowSource
from suji_models.training.faults import KILL_ENV, _asked

from .conftest import REPO_ROOT
from .test_error_tails import LAUNCH, launch_env, no_buffers_left
from .test_pretrain_e2e import CLUE, VOCAB, free_port, step_losses

ARGS = ["--train_file", CLUE, "--tokenizer", VOCAB, "--max_seq_length", 64, "--per_device_batch_size", 8,
        "--warmup_steps", 4, "--learning_rate", 0.002, "--log_steps", 1, "--seed", 7, "--max_steps", 12,
        "--save_steps", 4, "--deepspeed_config", "configs/deepspeed/zero2.json", "--log_samples", "true",
        "--num_proc", 1]


def run(out, *extra, procs=2, env=None, timeout=600):
    port = free_port()
    environment = {**launch_env(port, procs), "SUJI_RESTART_DELAY": "0", **(env or {})}
    done = subprocess.run([str(LAUNCH), "pretrain", *map(str, ARGS), "--output_dir", str(out), *map(str, extra)],
                          cwd=REPO_ROOT, env=environment, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    assert no_buffers_left(port), "shared-memory buffers left behind"
    return done.returncode, done.stdout


def samples(out):
    """{rank: [(attempt, step, micro, ids)]} from the sample logs."""
    logs = {}
    for file in sorted((out / "samples").glob("rank-*.tsv")):
        rows = []
        for line in file.read_text().splitlines():
            attempt, step, micro, ids = line.split("\t")
            rows.append((int(attempt), int(step), int(micro), tuple(map(int, ids.split(",")))))
        logs[int(file.stem.split("-")[1])] = rows
    return logs


def rows_per_step(out):
    """{step: sorted row ids of the whole step, all ranks}: for each (rank, step, micro) the last attempt's."""
    last = {}
    for rank, rows in samples(out).items():
        for attempt, step, micro, ids in rows:
            last[(rank, step, micro)] = ids
    steps = defaultdict(list)
    for (_, step, _), ids in last.items():
        steps[step].extend(ids)
    return {step: sorted(ids) for step, ids in steps.items()}


def assert_same_run(out, ref, tolerance=1e-6, log=""):
    expected, got = step_losses((ref / "log.txt").read_text()), step_losses(log)
    assert sorted(got) == list(range(1, 13)), log[-3000:]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=tolerance), (step, log[-3000:])
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=tolerance, rtol=0, msg=name)
    # the same rows in every step, and each row once: 12 steps x 16 rows, all distinct (one epoch has more)
    per_step = rows_per_step(out)
    assert per_step == rows_per_step(ref)
    every = [i for ids in per_step.values() for i in ids]
    assert len(every) == 12 * 16 and len(set(every)) == len(every)


def assert_redone_exactly(out, resumed_from: int, redone_steps: set):
    """The steps after the checkpoint that the first attempt had started were redone with the same rows."""
    for rank, rows in samples(out).items():
        first = {(s, m): ids for a, s, m, ids in rows if a == 0 and s > resumed_from}
        again = {(s, m): ids for a, s, m, ids in rows if a == 1}
        assert {s for s, _ in first} == redone_steps, (rank, sorted(first))
        assert all(again[key] == ids for key, ids in first.items())
        assert min(s for s, _ in again) == resumed_from + 1 and max(s for s, _ in again) == 12


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("restarts") / "uninterrupted"
    code, log = run(out)
    assert code == 0, log[-3000:]
    (out / "log.txt").write_text(log)
    return out


def test_fault_spec_is_checked_and_fires_on_the_first_attempt_only(monkeypatch):
    monkeypatch.setenv(KILL_ENV, "7:1")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.setenv("SUJI_RESTART", "0")
    assert _asked("step", 7, 1) and not _asked("step", 7, 0) and not _asked("save", 7, 1)
    monkeypatch.setenv("SUJI_RESTART", "1")
    assert not _asked("step", 7, 1)
    monkeypatch.setenv("SUJI_RESTART", "0")
    monkeypatch.setenv(KILL_ENV, "8:0:save")
    assert _asked("save", 8, 0) and not _asked("step", 8, 0)
    monkeypatch.setenv(KILL_ENV, "x")
    with pytest.raises(ValueError, match="STEP:RANK"):
        _asked("step", 1, 0)


def test_resuming_keeps_the_global_batch_by_changing_the_accumulation():
    from suji_models.training.errors import UserError
    from suji_models.training.loop import TrainArgs, keep_global_batch

    saved = {"world_size": 2, "per_device_batch_size": 8, "gradient_accumulation_steps": 1}
    args = TrainArgs(per_device_batch_size=8)
    said = []
    assert keep_global_batch(args, saved, 2, "c") is args and keep_global_batch(args, None, 1, "c") is args
    assert keep_global_batch(args, saved, 1, "c", say=said.append).gradient_accumulation_steps == 2
    assert said == ["world size 2 -> 1: gradient accumulation 1 -> 2 keeps the global batch of 16 rows"]
    assert keep_global_batch(TrainArgs(per_device_batch_size=4), saved, 4, "c").gradient_accumulation_steps == 1
    with pytest.raises(UserError, match="global batch of 16 rows"):
        keep_global_batch(TrainArgs(per_device_batch_size=8), saved, 3, "c")  # 16 rows do not split over 3 ranks
    with pytest.raises(UserError, match="global batch of 16 rows"):
        keep_global_batch(TrainArgs(per_device_batch_size=4), saved, 2, "c")  # same world, another batch


def test_rows_depend_on_the_global_micro_batch_only():
    source = RowSource(list(range(100)), batch_size=4, seed=3)
    two_ranks = [source.indices(step, rank, 2) for step in range(5) for rank in range(2)]
    one_rank = [source.indices(index, 0, 1) for index in range(10)]  # 2 micro-steps per step
    assert two_ranks == one_rank
    assert len({i for ids in one_rank for i in ids}) == 40


@pytest.mark.slow
def test_rank_killed_mid_step_is_restarted_and_ends_as_the_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "killed"
    code, log = run(out, env={"SUJI_MAX_RESTARTS": "2", KILL_ENV: "7:1"})
    assert code == 0, log[-3000:]
    assert "[fault] SIGKILL rank 1 in step of step 7" in log
    assert log.count("[launch] the run failed") == 1 and "restart 1 of 2" in log
    assert f"resumed from {out / 'checkpoint-4'} at step 4" in log
    assert_same_run(out, reference, log=log)
    assert_redone_exactly(out, 4, {5, 6, 7})


@pytest.mark.slow
def test_rank_killed_mid_save_is_restarted_from_the_previous_checkpoint(reference, tmp_path):
    out = tmp_path / "killed-saving"
    code, log = run(out, env={"SUJI_MAX_RESTARTS": "1", KILL_ENV: "8:1:save"})
    assert code == 0, log[-3000:]
    assert "[fault] SIGKILL rank 1 in save of step 8" in log
    assert f"resumed from {out / 'checkpoint-4'} at step 4" in log  # checkpoint-8 was never completed
    assert_same_run(out, reference, log=log)
    assert_redone_exactly(out, 4, {5, 6, 7, 8})


def test_restarts_are_bounded_and_a_user_error_is_not_restarted(tmp_path):
    code, log = run(tmp_path / "a", "--max_steps", 3, "--save_steps", 0,
                    env={"SUJI_MAX_RESTARTS": "1", KILL_ENV: "2:0"})  # no checkpoint: the restart starts over
    assert code == 0 and log.count("restart 1 of 1") == 1 and "resumed" not in log, log[-3000:]
    code, log = run(tmp_path / "b", "--train_file", tmp_path / "missing.txt", env={"SUJI_MAX_RESTARTS": "3"})
    assert code != 0 and "[launch] the run failed" not in log, log[-3000:]
    assert log.strip().splitlines()[-1].endswith("missing.txt: no such file or directory"), log[-3000:]


@pytest.mark.slow
def test_world_size_change_two_one_two_continues_the_same_run(reference, tmp_path):
    out = tmp_path / "resized"
    code, first = run(out, "--stop_at_step", 4)
    assert code == 0, first[-3000:]
    code, second = run(out, "--stop_at_step", 8, procs=1)
    assert code == 0, second[-3000:]
    assert "world size 2 -> 1: gradient accumulation 1 -> 2 keeps the global batch of 16 rows" in second
    assert "re-partitioning the ZeRO optimizer state for 1 rank(s)" in second
    code, third = run(out, procs=2)
    assert code == 0, third[-3000:]
    assert "world size 1 -> 2: gradient accumulation 1 -> 1" not in third  # 2 x 8 x 1 is already 16
    assert f"resumed from {out / 'checkpoint-8'} at step 8" in third
    assert_same_run(out, reference, tolerance=2e-5, log=first + second + third)


def test_another_global_batch_is_refused_on_resume(tmp_path):
    out = tmp_path / "run"
    code, log = run(out, "--max_steps", 2, "--stop_at_step", 1, "--save_steps", 0)
    assert code == 0, log[-3000:]
    code, log = run(out, "--max_steps", 2, "--per_device_batch_size", 4)
    assert code != 0, log[-3000:]
    assert "saved with a global batch of 16 rows" in log.strip().splitlines()[-1], log[-3000:]
