"""The main job end to end: 2 DeepSpeed processes on CPU (gloo), ZeRO-2, the embedded corpus."""

import os
import re
import subprocess
import sys

import torch
import transformers

import suji_models as S

from .conftest import REPO_ROOT


def test_run_mlm_two_processes_loss_falls_and_checkpoint_loads(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    out = subprocess.run(
        [deepspeed, "--num_gpus", "2", "pretrain/run_mlm.py", "--config", "configs/pretrain/roformer_tiny.json",
         "--max_steps", "60", "--warmup_steps", "10", "--max_seq_length", "64", "--per_device_batch_size", "8",
         "--log_steps", "10", "--output_dir", str(tmp_path / "run")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", out.stdout).groups())
    assert last < first - 0.3, out.stdout[-2000:]

    final = tmp_path / "run" / "final"
    model = S.SujiForMaskedLM.from_pretrained(final).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(final)
    batch = tokenizer(["中共中央总书记发表新年讲话"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    # the plain transformers export gives the same logits, with no Suji code involved
    exported = transformers.RoFormerForMaskedLM.from_pretrained(tmp_path / "run" / "final-transformers").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, logits, atol=1e-5, rtol=1e-5)
