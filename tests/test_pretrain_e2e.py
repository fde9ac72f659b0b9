"""The pretraining entry points end to end: 2 DeepSpeed processes on CPU (gloo), real text."""

import glob
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file

import suji_models as S

from .conftest import REPO_ROOT, SHARED

CLUE = SHARED / "data" / "corpus" / "clue_corpus_small" / "CLUECorpusSmall_sampled.txt"
INEWS = SHARED / "data" / "corpus" / "inews" / "dev.jsonl"
VOCAB = REPO_ROOT / "pretrain" / "data" / "vocab.txt"


def free_port() -> int:
    with socket.socket() as s:  # concurrent jobs must not share DeepSpeed's default port 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, *args, procs=2, timeout=900, port=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    command = [deepspeed, "--num_gpus", str(procs), "--master_port", str(port or free_port()), script, *map(str, args)]
    out = subprocess.run(command, cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def ok(script, *args, **kw):
    port = free_port()
    code, log = launch(script, *args, port=port, **kw)
    assert code == 0, log[-4000:]
    # DeepSpeed's CPU shared-memory buffers (66 MB per rank, in RAM) must not outlive the run
    assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*"), "shared-memory buffers left behind"
    return log


def loss_drop(log):
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", log).groups())
    return first - last


COMMON = ["--tokenizer", VOCAB, "--max_seq_length", 64, "--per_device_batch_size", 8, "--warmup_steps", 10,
          "--learning_rate", 0.002, "--log_steps", 10]


@pytest.mark.parametrize("stage", [2, 3])
def test_mlm_on_real_text_loss_falls_and_export_matches_engine(stage, tmp_path):
    out = tmp_path / "run"
    log = ok("pretrain/run_mlm.py", "--train_file", CLUE, "--max_steps", 60, "--output_dir", out,
             "--deepspeed_config", f"configs/deepspeed/zero{stage}.json", *COMMON)
    assert loss_drop(log) > 0.3, log[-2000:]
    padding = float(re.search(r"padding ([\d.]+)%", log).group(1))
    assert padding < 5.0
    diff = float(re.search(r"max \|diff\| ([\d.e+-]+)", log).group(1))
    assert diff < 1e-4  # the consolidated checkpoint reproduces the engine's own logits
    model = S.SujiForMaskedLM.from_pretrained(out / "final").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "final")
    batch = tokenizer(["中共中央总书记发表新年讲话"], return_tensors="pt")
    exported = transformers.RoFormerForMaskedLM.from_pretrained(out / "final-transformers").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


def step_losses(log):
    return {int(s): float(l) for s, l in re.findall(r"step\s+(\d+) \| loss ([\d.]+)", log)}


def test_resume_equals_uninterrupted_run(tmp_path):
    args = ["--train_file", CLUE, "--max_steps", 16, "--deepspeed_config", "configs/deepspeed/zero2.json",
            *COMMON, "--log_steps", 1, "--seed", 7]
    full = ok("pretrain/run_mlm.py", *args, "--output_dir", tmp_path / "full")
    first = ok("pretrain/run_mlm.py", *args, "--output_dir", tmp_path / "split", "--stop_at_step", 8)
    assert "stopped at step 8" in first and (tmp_path / "split" / "checkpoint-8" / "COMPLETE").is_file()
    second = ok("pretrain/run_mlm.py", *args, "--output_dir", tmp_path / "split")
    assert "resumed from" in second and "at step 8" in second
    expected, got = step_losses(full), {**step_losses(first), **step_losses(second)}
    assert sorted(got) == list(range(1, 17)) and sorted(expected) == list(range(1, 17))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    a, b = load_file(tmp_path / "full" / "final" / "model.safetensors"), load_file(tmp_path / "split" / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


def test_incomplete_checkpoint_is_never_resumed(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-4").mkdir(parents=True)  # written by a crashed job: no COMPLETE marker
    log = ok("pretrain/run_mlm.py", "--train_file", CLUE, "--max_steps", 3, "--output_dir", out, *COMMON, "--log_steps", 1)
    assert "resumed" not in log and "step      1" in log


def test_clm_zero1_loss_falls(tmp_path):
    log = ok("pretrain/run_clm.py", "--train_file", CLUE, "--max_steps", 50, "--output_dir", tmp_path / "clm",
             "--deepspeed_config", "configs/deepspeed/zero1.json", *COMMON)
    assert loss_drop(log) > 0.3, log[-2000:]
    model = S.SujiForCausalLM.from_pretrained(tmp_path / "clm" / "final")
    assert model.generate(torch.tensor([[2, 100, 200]]), max_new_tokens=5, do_sample=False).shape == (1, 8)
    assert (tmp_path / "clm" / "final-transformers" / "config.json").is_file()  # GPT2-shaped: exported too


def test_unilm_pairs_zero3_loss_falls(tmp_path):
    log = ok("pretrain/run_unilm.py", "--train_file", INEWS, "--source_field", "content", "--target_field", "title",
             "--max_steps", 50, "--output_dir", tmp_path / "unilm", "--deepspeed_config", "configs/deepspeed/zero3.json",
             *COMMON)
    assert loss_drop(log) > 0.3, log[-2000:]
    assert "over-long pair(s) truncated" in log
    model = S.SujiForUniLM.from_pretrained(tmp_path / "unilm" / "final")
    assert isinstance(model, S.SujiForUniLM)


def test_contradicting_deepspeed_config_fails_before_training(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}))
    code, log = launch("pretrain/run_mlm.py", "--deepspeed_config", bad, "--per_device_batch_size", 8,
                       "--output_dir", tmp_path / "x", procs=1)
    assert code != 0
    assert "train_micro_batch_size_per_gpu=4 contradicts the command line (8)" in log
    assert "step " not in log and "data:" not in log


def test_bad_corpus_line_is_named_or_skipped(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(("今天天气很好，我们去公园散步吧。" * 4 + "\n").encode() * 50 + b"\xff\xfe\n"
                       + ("明天也许会下雨。" * 8 + "\n").encode() * 50)
    code, log = launch("pretrain/run_mlm.py", "--train_file", corpus, "--output_dir", tmp_path / "a", *COMMON,
                       "--max_steps", 2, procs=1)
    assert code != 0 and "c.txt:51: invalid UTF-8" in log
    log = ok("pretrain/run_mlm.py", "--train_file", corpus, "--output_dir", tmp_path / "b", *COMMON,
             "--max_steps", 2, "--skip_bad_lines", "true", "--report_to", "wandb", procs=1)
    assert "1 bad line(s) skipped" in log
    assert list((tmp_path / "b" / "wandb").glob("offline-run-*"))  # no API key: wandb logs offline


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["1", "2", "3", "2_offload"])
@pytest.mark.parametrize("script", ["run_mlm", "run_clm", "run_unilm"])
def test_every_entry_point_under_every_zero_stage(script, stage, tmp_path):
    data = ["--train_file", INEWS, "--source_field", "content", "--target_field", "title"] if script == "run_unilm" \
        else ["--train_file", CLUE]
    log = ok(f"pretrain/{script}.py", *data, "--max_steps", 6, "--output_dir", tmp_path / "run",
             "--deepspeed_config", f"configs/deepspeed/zero{stage}.json", *COMMON)
    assert "summary: 6 steps" in log and (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_streaming_mode_trains_on_per_rank_shards(tmp_path):
    log = ok("pretrain/run_mlm.py", "--train_file", CLUE, "--streaming", "true", "--max_steps", 30,
             "--output_dir", tmp_path / "s", *COMMON)
    assert "data: streaming 1 file(s)" in log
    assert loss_drop(log) > 0.2, log[-2000:]


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    """Verified checkpoints: a flipped byte in the newest checkpoint's shard is found by its manifest;
    the rerun names the file and resumes from the checkpoint before."""
    out = tmp_path / "run"
    args = ["--train_file", CLUE, "--max_steps", 6, "--save_steps", 2, "--output_dir", out,
            "--deepspeed_config", "configs/deepspeed/zero2.json", *COMMON, "--log_steps", 1]
    first = ok("pretrain/run_mlm.py", *args)
    assert (out / "checkpoint-2" / "MANIFEST.json").is_file() and (out / "checkpoint-4" / "MANIFEST.json").is_file()
    shard = out / "checkpoint-4" / "state" / "mp_rank_00_model_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    second = ok("pretrain/run_mlm.py", *args)
    bad = [line for line in second.splitlines() if "checkpoint-4 is bad" in line]
    assert len(bad) == 1, second[-3000:]
    assert "state/mp_rank_00_model_states.pt: sha256 differs from the manifest" in bad[0]
    assert "resumed from" in second and "checkpoint-2 at step 2" in second
    assert step_losses(second)[3] == pytest.approx(step_losses(first)[3], abs=1e-6)  # the same run, continued
    assert (out / "bad-checkpoint-4").is_dir() and (out / "checkpoint-4" / "COMPLETE").is_file()


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A save that fails with ENOSPC (injected after the shards are written) ends the run with one line
    saying so; the previous checkpoint is complete and matches its manifest."""
    from suji_models.training.checkpoint import FAULT_ENV, complete_checkpoints, verify_checkpoint

    monkeypatch.setenv(FAULT_ENV, "4")
    out = tmp_path / "run"
    code, log = launch("pretrain/run_mlm.py", "--train_file", CLUE, "--max_steps", 6, "--save_steps", 2,
                       "--save_total_limit", 1, "--output_dir", out, "--deepspeed_config",
                       "configs/deepspeed/zero2.json", *COMMON, "--log_steps", 1)
    assert code != 0
    assert log.count("error: no space left on device while saving checkpoint-4") == 1, log[-3000:]
    assert f"no space left on device while saving checkpoint-4 in {out}; checkpoint-2 is intact" in log
    assert "Traceback" not in log
    assert complete_checkpoints(out) == [out / "checkpoint-2"] and verify_checkpoint(out / "checkpoint-2") is None
