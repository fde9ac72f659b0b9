"""finetune/ner.py end to end: a tiny model trained a few hundred steps on a People's Daily subset
beats an untrained one on held-out sentences; the best checkpoint, results and predictions are written.

The smoke run uses the CRF head: with a 2-layer, 64-wide encoder and 150 steps it reaches ~0.4 entity
F1, where GlobalPointer needs a larger model or more steps (tests/test_ner_model.py trains all three
heads to fit a batch exactly; the measured results are in finetune/ner.py)."""

import json
import os
import re
import subprocess
import sys

import torch

import suji_models as S
from suji_models.tasks.ner import SujiForNer, entity_scores, predict, read_ner, set_ner_config, spans_to_bio
from tokenization import load_tokenizer

from .conftest import REPO_ROOT

VOCAB = REPO_ROOT / "pretrain" / "data" / "vocab.txt"
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def write_bio(path, examples):
    with open(path, "w", encoding="utf-8") as handle:
        for ex in examples:
            tags, _ = spans_to_bio(len(ex.text), ex.entities)
            handle.writelines(f"{ch} {tag}\n" for ch, tag in zip(ex.text, tags))
            handle.write("\n")


def test_recipe_trains_keeps_the_best_checkpoint_and_predicts(shared_data, tmp_path):
    examples = read_ner(shared_data / "ner" / "people_daily" / "example.dev", "bio")
    train, held_out = examples[:600], examples[2000:2150]  # disjoint sentences
    write_bio(tmp_path / "train.bio", train)
    write_bio(tmp_path / "dev.bio", held_out)
    (tmp_path / "texts.txt").write_text("新华社北京5月7日电国务院副总理李岚清今天在中南海会见了客人。\n", encoding="utf-8")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "finetune/ner.py", "--train_file", tmp_path / "train.bio", "--dev_file", tmp_path / "dev.bio",
           "--format", "bio", "--tokenizer", VOCAB, "--model_preset", "roformer-tiny",
           "--model_overrides", json.dumps(TINY), "--head", "crf",
           "--max_seq_length", 64, "--per_device_batch_size", 16, "--max_steps", 150, "--eval_steps", 75,
           "--learning_rate", 0.003, "--warmup_steps", 20, "--log_steps", 50, "--seed", 1,
           "--output_dir", out, "--predict", tmp_path / "texts.txt"]
    run = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    trained = float(re.search(r"summary: dev f1 ([\d.]+)", log).group(1))

    # the same architecture, untrained, on the same held-out sentences
    tokenizer = load_tokenizer(VOCAB)
    torch.manual_seed(1)
    config = S.SujiConfig.from_preset("roformer-tiny", vocab_size=len(tokenizer), **TINY)
    untrained_model = SujiForNer(set_ner_config(config, "crf", ["LOC", "ORG", "PER"])).eval()
    untrained = entity_scores([e.entities for e in held_out],
                              predict(untrained_model, tokenizer, [e.text for e in held_out]))["f1"]
    assert untrained < 0.1
    assert trained > 0.3 and trained > untrained + 0.25, log[-3000:]

    # the kept checkpoint is the best evaluation, and it reloads to the same dev F1
    results = json.loads((out / "results.json").read_text())
    best_eval = max(h["f1"] for h in results["history"])
    assert abs(results["dev"]["f1"] - trained) < 1e-4 and abs(best_eval - results["dev"]["f1"]) < 1e-9
    assert [h["step"] for h in results["history"]] == [75, 150]
    assert "eval_f1" in log and "new best f1" in log
    assert results["alignment"]["dev"]["entities"] == sum(len(e.entities) for e in held_out)
    reloaded = SujiForNer.from_pretrained(out / "best")
    assert reloaded.types == ["LOC", "ORG", "PER"] and (out / "best" / "vocab.txt").is_file()
    (record,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert record["text"].startswith("新华社")
    for entity in record["entities"]:
        assert record["text"][entity["start"]:entity["end"]] == entity["text"]
        assert entity["type"] in ("LOC", "ORG", "PER")
