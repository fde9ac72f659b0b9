"""A tiny model and batch stream for tests that run the training loop inside a real DeepSpeed engine
(imported by the scripts those tests start in a fresh process), and the helper that starts them."""

import torch
import transformers
from torch import nn


class Out:
    def __init__(self, loss):
        self.loss = loss


class Tiny(transformers.PreTrainedModel):
    """Embedding -> mean -> linear classifier over 12 tokens and 3 classes; saves like any HF model."""

    config_class = transformers.PretrainedConfig

    def __init__(self, config=None):
        super().__init__(config or transformers.PretrainedConfig())
        self.emb = nn.Embedding(12, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, input_ids, labels):
        return Out(nn.functional.cross_entropy(self.out(self.emb(input_ids).mean(1)), labels))


def batches(index, rank, world):
    """Rows of micro-step `index`: a pure function of it, as the loop requires."""
    g = torch.Generator().manual_seed(index)
    return {"input_ids": torch.randint(0, 12, (4, 5), generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}


def run_one_process(script: str, *args) -> tuple[dict, str]:
    """Run `script` (Python source) as rank 0 of a one-process world on CPU: the JSON object it prints
    after `RESULTS `, and its whole log."""
    import json
    import os
    import subprocess
    import sys

    from .conftest import REPO_ROOT
    from .test_pretrain_e2e import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    return json.loads(log.split("RESULTS ", 1)[1].splitlines()[0]), log
