"""finetune/dialogue.py end to end on LCCC dialogues: a short run beats the same untrained model on the
reference replies' perplexity, keeps the best checkpoint, scores generated replies, predicts, and
--chat talks through scripted stdin keeping its history."""

import json
import os
import re
import subprocess
import sys

import torch

import suji_models as S
from suji_models.tasks import dialogue as D
from tokenization import load_tokenizer

from .conftest import REPO_ROOT, SHARED

LCCC = SHARED / "data" / "dialogue" / "lccc_toy"
TOKENIZER = SHARED / "models" / "suji-roformer-small-zh"
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def test_recipe_trains_beats_untrained_generates_predicts_and_chats(tmp_path):
    train = (LCCC / "toy_train.txt").read_text(encoding="utf-8").splitlines()[:480]
    dev = (LCCC / "toy_valid.txt").read_text(encoding="utf-8").splitlines()[:40]
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (tmp_path / "dev.txt").write_text("\n".join(dev) + "\n", encoding="utf-8")
    (tmp_path / "histories.txt").write_text("今 天 天 气 真 好\n你 好\t你 好 呀\t在 干 嘛\n", encoding="utf-8")
    out = tmp_path / "run"
    cmd = [sys.executable, "finetune/dialogue.py", "--train_file", tmp_path / "train.txt",
           "--dev_file", tmp_path / "dev.txt", "--tokenizer", TOKENIZER, "--model_preset", "roformer-tiny",
           "--model_overrides", json.dumps(TINY), "--max_seq_length", 64, "--per_device_batch_size", 16,
           "--max_steps", 30, "--eval_steps", 15, "--learning_rate", 0.003, "--warmup_steps", 5, "--log_steps", 10,
           "--seed", 1, "--eval_generate", 6, "--max_new_tokens", 8, "--num_candidates", 2,
           "--output_dir", out, "--predict", tmp_path / "histories.txt"]
    run = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    trained = float(re.search(r"summary: dev perplexity ([\d.e+]+)", log).group(1))

    # the same architecture, untrained, on the same dev replies
    tokenizer = load_tokenizer(TOKENIZER)
    torch.manual_seed(1)
    config = S.SujiConfig.from_preset("roformer-tiny", vocab_size=len(tokenizer), pad_token_id=0, **TINY)
    rows = D.encode_dialogues(tokenizer, D.read_dialogues(tmp_path / "dev.txt"), 64, "causal")
    untrained = D.evaluate_perplexity(S.SujiForCausalLM(config), rows, 0, "causal")["perplexity"]
    assert untrained > 5000  # about uniform over 15,861 tokens
    assert trained < untrained / 5, log[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert [h["step"] for h in results["history"]] == [15, 30]
    assert abs(min(h["perplexity"] for h in results["history"]) - results["dev"]["perplexity"]) < 1e-3 * trained
    dev_scores = results["dev"]
    assert dev_scores["generated"] == 6
    assert dev_scores["reply_tokens"] == sum(sum(1 for t in r.labels[1:] if t != -100) for r in rows)
    assert 0 <= dev_scores["bleu-2"] <= 100 and 0 < dev_scores["distinct-1"] <= 100
    assert results["encoding"]["rows"] == 480
    dev_dialogues = D.read_dialogues(tmp_path / "dev.txt")
    drawn = D.sample_examples(dev_dialogues[:6], 3, seed=0)  # the seeded draw among the generated ones
    assert [e["reference"] for e in results["examples"]] == [d[-1] for d in drawn]
    assert all(len(e["replies"]) == 2 and e["history"] for e in results["examples"])
    assert log.count("example: ") >= 3
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["history"] for p in predictions] == [["今天天气真好"], ["你好", "你好呀", "在干嘛"]]
    assert all(len(p["replies"]) == 2 for p in predictions)
    assert json.loads((out / "best" / "config.json").read_text())["dialogue_mask"] == "causal"

    chat = subprocess.run([sys.executable, "finetune/dialogue.py", "--chat", "--model", str(out / "best"),
                           "--max_new_tokens", "6", "--top_k", "10"],
                          input="你好\n在干嘛\n/reset\n再见\n", cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert chat.stdout.count("bot: ") == 3 and "(history cleared)" in chat.stdout
    assert "(3 replies)" in chat.stderr
