"""Numeric guards of the training loop inside a real DeepSpeed engine (one CPU process, fp32): a step
with a NaN loss (injected through $SUJI_FAULT_NAN_LOSS_AT, which makes backward fill the gradients with
NaN) changes neither the weights nor the optimizer state, without ZeRO and under ZeRO-2 and ZeRO-3; K in a row stop
the run with a UserError naming step, loss, grad norm and learning rate, and the checkpoints stay valid."""

import textwrap

from .tiny_engine_model import run_one_process

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import deepspeed
    from suji_models.training import faults, loop
    from suji_models.training.checkpoint import complete_checkpoints, verify_checkpoint
    from suji_models.training.errors import UserError
    from tests.tiny_engine_model import Tiny, batches

    def optimizer_tensors(engine):
        base = getattr(engine.optimizer, "optimizer", engine.optimizer)
        return [t.detach().clone() for state in base.state.values() for t in state.values() if torch.is_tensor(t)]

    def run(out, stage, nan_steps, max_bad, max_steps=6, save_steps=0):
        os.environ[faults.NAN_FAULT_ENV] = nan_steps
        snapshots = {}

        def after_step(engine):
            params = list(engine.module.parameters())
            with deepspeed.zero.GatheredParameters(params):  # ZeRO-3: the whole weights, not the shards
                weights = [p.detach().clone() for p in params]
            snapshots[len(snapshots) + 1] = (weights, optimizer_tensors(engine))

        args = loop.TrainArgs(output_dir=out, max_steps=max_steps, per_device_batch_size=4, warmup_steps=1,
                              learning_rate=0.05, log_steps=1, zero_stage=stage, max_bad_steps=max_bad,
                              save_steps=save_steps, save_total_limit=5)
        result = {"error": None}
        try:
            losses, engine = loop.train(Tiny, batches, args, hooks=loop.StepHooks(after_step=after_step))
            result["losses"] = losses
        except UserError as exc:
            result["error"] = str(exc)
        same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
        result["unchanged_by_step"] = {  # weights and optimizer state equal to those after the step before
            s: same(snapshots[s - 1][0], snapshots[s][0]) and same(snapshots[s - 1][1], snapshots[s][1])
            for s in snapshots if s > 1}
        result["finite"] = all(bool(torch.isfinite(t).all()) for s in snapshots.values() for t in s[0] + s[1])
        result["checkpoints"] = {p.name: verify_checkpoint(p) for p in complete_checkpoints(out)}
        return result

    results = {
        "stage0": run(sys.argv[1] + "/s0", 0, "3", 5),
        "stage2": run(sys.argv[1] + "/s2", 2, "3", 5),
        "stage3": run(sys.argv[1] + "/s3", 3, "3", 5),
        "stop": run(sys.argv[1] + "/stop", 0, "3,4,5", 3, max_steps=8, save_steps=2),
    }
    print("RESULTS " + json.dumps(results))
''')


def test_nan_steps_are_skipped_and_k_in_a_row_stop_the_run(tmp_path):
    results, log = run_one_process(SCRIPT, tmp_path)
    for stage in ("stage0", "stage2", "stage3"):
        r = results[stage]
        assert r["error"] is None and r["finite"], (stage, r)
        # the NaN step 3 changed neither weights nor optimizer state; the steps around it did
        assert r["unchanged_by_step"] == {"2": False, "3": True, "4": False, "5": False, "6": False}, (stage, r)
        losses = dict(r["losses"])  # NaN != NaN
        assert losses[3] != losses[3] and all(losses[s] == losses[s] for s in (1, 2, 4, 5, 6)), (stage, losses)
    assert log.count("non-finite loss nan") >= 3 and "1 step(s) skipped for a non-finite loss" in log
    stop = results["stop"]
    assert stop["error"].startswith("3 steps in a row with a non-finite loss (--max_bad_steps 3): step 5, loss nan, "
                                    "grad norm nan, learning rate "), stop
    assert "checkpoint-4 is the last good checkpoint" in stop["error"]
    assert stop["finite"] and stop["checkpoints"] == {"checkpoint-2": None, "checkpoint-4": None}
