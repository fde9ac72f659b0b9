"""EMA in the training loop (--ema, suji_models.optim.hooks): inside a real DeepSpeed engine (one CPU
process, ZeRO-2), evaluation sees the averaged weights, training goes on from the raw ones, the best
model saved is the average, and a run stopped and resumed ends with the same average as an
uninterrupted one (the shadow weights are in every resumable checkpoint)."""

import textwrap

from .tiny_engine_model import run_one_process

SCRIPT = textwrap.dedent('''
    import json, sys
    from types import SimpleNamespace
    import torch
    from safetensors.torch import load_file
    from suji_models.optim.hooks import TrickOptions, step_hooks
    from suji_models.training import loop
    from tests.tiny_engine_model import Tiny, batches

    DECAY = 0.5

    def weights(module):
        return {n: p.detach().clone() for n, p in module.named_parameters()}

    def run(out, stop_at_step=0):
        args = loop.TrainArgs(output_dir=out, max_steps=6, per_device_batch_size=4, warmup_steps=1, learning_rate=0.05,
                              log_steps=1, zero_stage=2, save_steps=0, stop_at_step=stop_at_step)
        hooks = step_hooks(TrickOptions(ema=DECAY), SimpleNamespace(deepspeed_config=None, zero_stage=2, seed=0,
                                                                    learning_rate=0.05, weight_decay=0.0))
        raw, seen = [], {}
        after = hooks.after_step

        def after_step(engine):
            after(engine)
            raw.append(weights(engine.module))

        hooks.after_step = after_step

        def evaluate(engine, step):
            seen[step] = weights(engine.module)
            return {"score": -float(step)}  # the first evaluation stays the best

        evaluation = loop.Evaluation(evaluate, every=3, best_metric="score")
        losses, engine = loop.train(Tiny, batches, args, evaluation=evaluation, hooks=hooks)
        return raw, seen, engine, hooks.state

    def close(a, b):
        return all(torch.allclose(a[n], b[n], atol=1e-6, rtol=0) for n in a)

    out = sys.argv[1]
    raw, seen, engine, ema = run(out + "/full")
    # the average by hand: it starts at the weights after step 1, then shadow <- d * shadow + (1 - d) * theta
    shadow = {n: t.clone() for n, t in raw[0].items()}
    by_hand = {}
    for step, theta in enumerate(raw[1:], start=2):
        shadow = {n: DECAY * shadow[n] + (1 - DECAY) * theta[n] for n in shadow}
        by_hand[step] = {n: t.clone() for n, t in shadow.items()}
    best = load_file(out + "/full/best/model.safetensors")
    split_raw, _, split_engine, split_ema = run(out + "/split", stop_at_step=4)
    split_raw2, split_seen, split_engine, split_ema = run(out + "/split")
    print("RESULTS " + json.dumps({
        "eval_is_average": {s: close(seen[s], by_hand[s]) for s in seen},
        "eval_is_not_raw": {s: not close(seen[s], raw[s - 1]) for s in seen},
        "training_continues_raw": close(weights(engine.module), raw[-1]),
        "best_is_average_at_3": close({n: best[n] for n in by_hand[3]}, by_hand[3]),
        "resumed_average_equal": close(split_ema.shadow, ema.shadow),
        "resumed_eval_equal": close(split_seen[6], seen[6]),
    }))
    loop.finish_distributed()
''')


def test_ema_weights_are_evaluated_and_saved_and_resume_continues_the_average(tmp_path):
    results, log = run_one_process(SCRIPT, tmp_path)
    assert results["eval_is_average"] == {"3": True, "6": True}, results
    assert results["eval_is_not_raw"] == {"3": True, "6": True}, results
    assert results["training_continues_raw"] and results["best_is_average_at_3"], results
    assert results["resumed_average_equal"] and results["resumed_eval_equal"], results
