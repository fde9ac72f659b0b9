"""The training tricks inside a real DeepSpeed engine (ZeRO-1 and ZeRO-2, fp32, one CPU process) give
the same weights as the same tricks in a plain PyTorch loop, in three combinations: AdaX + ChildTuning-F
+ FGM + EMA; layer-wise lr decay (AdaX groups) + ChildTuning-D + gradient penalty; AdamW + R-Drop."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from torch import nn
    import deepspeed
    from suji_models.optim import (EMA, FGM, AdaX, ChildTuningD, ChildTuningF, GradientPenalty, RDrop,
                                   fisher_information, layerwise_lr_groups)

    class Out:
        def __init__(self, loss, logits):
            self.loss, self.logits = loss, logits

    class Tiny(nn.Module):
        def __init__(self, dropout=0.0):
            super().__init__()
            torch.manual_seed(0)
            self.dropout = nn.Dropout(dropout)
            self.word_embeddings = nn.Embedding(12, 6)
            self.layers = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)])
            self.out = nn.Linear(6, 3)

        def forward(self, input_ids, labels):
            h = self.word_embeddings(input_ids)
            for layer in self.layers:
                h = self.dropout(torch.tanh(layer(h)))
            logits = self.out(h.mean(1))
            return Out(nn.functional.cross_entropy(logits, labels), logits)

    class Plain:
        def __init__(self, module):
            self.module, self.global_steps = module, 0

        def __call__(self, **batch):
            return self.module(**batch)

    def batch(step):
        g = torch.Generator().manual_seed(step)
        return {"input_ids": torch.randint(0, 12, (4, 5), generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}

    stage = int(sys.argv[1])
    deepspeed.init_distributed(dist_backend="gloo")
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**9}

    def scenario(name):
        """(optimizer factory, tricks factory, dropout) of one combination."""
        if name == "adax+child_f+fgm+ema":
            return (lambda m: AdaX(m.parameters(), lr=0.05),
                    lambda m: dict(child=ChildTuningF(reserve=0.5, seed=3), ema=EMA(0.8), loss=FGM(0.5)), 0.0)
        if name == "layer_decay+child_d+gp":
            def tricks(m):
                fisher = fisher_information(Tiny(), [batch(100 + i) for i in range(2)])
                return dict(child=ChildTuningD(reserve=0.3).fit(fisher), loss=GradientPenalty(1.0))
            return (lambda m: AdaX(layerwise_lr_groups(m, 0.05, 0.5, 0.01), lr=0.05), tricks, 0.0)
        return (lambda m: torch.optim.AdamW(m.parameters(), lr=0.01), lambda m: dict(loss=RDrop(4.0)), 0.3)

    results = {}
    for name in ("adax+child_f+fgm+ema", "layer_decay+child_d+gp", "rdrop"):
        make_optimizer, make_tricks, dropout = scenario(name)
        model = Tiny(dropout)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=make_optimizer(model), config=config)
        tricks = make_tricks(model)
        reference = Tiny(dropout)
        plain = Plain(reference)
        optimizer = make_optimizer(reference)
        ref_tricks = make_tricks(reference)
        for t, target in ((tricks, engine), (ref_tricks, plain)):
            for key in ("child", "ema"):
                if key in t:
                    t[key].attach(target)
        for step in range(4):
            torch.manual_seed(1000 + step)  # the same dropout masks on both sides
            loss = tricks["loss"].loss(engine, batch(step))
            engine.backward(loss)
            engine.step()
            if "ema" in tricks:
                tricks["ema"].after_step(engine)

            torch.manual_seed(1000 + step)
            optimizer.zero_grad()
            ref_tricks["loss"].loss(plain, batch(step)).backward()
            optimizer.step()
            plain.global_steps += 1
            if "ema" in ref_tricks:
                ref_tricks["ema"].after_step(plain)
        weights = max((p - q).abs().max().item() for p, q in zip(engine.module.parameters(), reference.parameters()))
        shadows = max([(tricks["ema"].shadow[n] - ref_tricks["ema"].shadow[n]).abs().max().item()
                       for n in tricks["ema"].shadow] if "ema" in tricks else [0.0])
        moved = max((p - q).abs().max().item() for p, q in zip(engine.module.parameters(), Tiny().parameters()))
        results[name] = {"weights": weights, "shadows": shadows, "moved": moved}
    print("RESULT " + json.dumps(results), flush=True)
    from suji_models.training.loop import finish_distributed
    finish_distributed()  # also unlinks DeepSpeed's shared-memory buffer
''')


@pytest.mark.parametrize("stage", [1, 2])
def test_tricks_compose_with_zero(stage, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(29700 + stage + os.getpid() % 200), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, str(script), str(stage)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    import json

    results = json.loads(lines[-1][len("RESULT "):])
    assert len(results) == 3
    for name, result in results.items():
        assert result["moved"] > 1e-3, name  # training did change the weights
        assert result["weights"] < 1e-5 and result["shadows"] < 1e-5, (name, result)
