"""finetune/classification.py end to end: single-label (THUCNews titles subset) beats chance and reports
accuracy before/after CAN; multi-label (ZLPR) learns a toy label set; prediction-only runs write JSONL."""

import json
import os
import random
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
VOCAB = REPO_ROOT / "pretrain" / "data" / "vocab.txt"


def run_recipe(*args, expect_rc=0):
    cmd = [sys.executable, "finetune/classification.py", *map(str, args)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == expect_rc, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def tiny_args(out, steps):
    return ["--tokenizer", VOCAB, "--model_preset", "roformer-tiny", "--model_overrides", json.dumps(TINY),
            "--max_seq_length", 32, "--per_device_batch_size", 32, "--max_steps", steps, "--learning_rate", 0.003,
            "--warmup_steps", 10, "--seed", 1, "--eval_batch_size", 128, "--output_dir", out]


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_single_label_beats_chance_reports_can_and_predicts(shared_data, tmp_path, optimizer):
    source = shared_data / "classification" / "thucnews_titles"
    lines = open(source / "dev.txt", encoding="utf-8").readlines()
    (tmp_path / "train.txt").write_text("".join(lines[:1000]), encoding="utf-8")
    (tmp_path / "dev.txt").write_text("".join(lines[9000:9300]), encoding="utf-8")  # held out
    (tmp_path / "class.txt").write_text((source / "class.txt").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "texts.txt").write_text("沪指收涨1.2% 券商股领涨\n国足主帅宣布亚洲杯大名单\n", encoding="utf-8")
    out = tmp_path / "run"
    run_recipe("--train_file", tmp_path / "train.txt", "--dev_file", tmp_path / "dev.txt", "--format", "thucnews",
               *tiny_args(out, 60), "--optimizer", optimizer, "--predict", tmp_path / "texts.txt")
    dev = json.loads((out / "results.json").read_text())["dev"]
    gold = [line.rsplit("\t", 1)[1] for line in lines[9000:9300]]
    majority = 100 * max(gold.count(g) for g in set(gold)) / len(gold)
    assert dev["accuracy"] > majority + 12, (dev, majority)  # measured: 34% vs a 10-class majority of ~12%
    assert {"accuracy_can", "low_confidence", "accuracy_confident"} <= set(dev) and dev["examples"] == 300
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [set(p) for p in predictions] == [{"text", "label", "probability", "label_can"}] * 2
    names = (tmp_path / "class.txt").read_text(encoding="utf-8").split()
    assert {p["label"] for p in predictions} <= set(names)


def test_adafactor_under_zero_is_refused_in_one_line(tmp_path):
    (tmp_path / "train.tsv").write_text("label\ttext_a\n1\t很好\n0\t不好\n", encoding="utf-8")
    out = run_recipe("--train_file", tmp_path / "train.tsv", "--dev_file", tmp_path / "train.tsv",
                     *tiny_args(tmp_path / "run", 2), "--optimizer", "adafactor", "--zero_stage", 1, expect_rc=1)
    last = out.strip().splitlines()[-1]
    assert "adafactor" in last and "ZeRO" in last and "Traceback" not in out, out[-2000:]


def test_multi_label_zlpr_learns_a_toy_label_set(tmp_path):
    rng = random.Random(0)
    animals = {"猫": "cat", "狗": "dog", "鱼": "fish"}
    filler = "今天我们在家里看见了一只很可爱的"

    def example():
        chosen = [a for a in animals if rng.random() < 0.5] or [rng.choice(list(animals))]
        text = "".join(rng.sample(filler, 6)) + "和".join(chosen)
        return json.dumps({"text": text, "labels": [animals[a] for a in chosen]}, ensure_ascii=False)

    (tmp_path / "train.json").write_text("\n".join(example() for _ in range(400)), encoding="utf-8")
    (tmp_path / "dev.json").write_text("\n".join(example() for _ in range(100)), encoding="utf-8")
    out = tmp_path / "run"
    run_recipe("--train_file", tmp_path / "train.json", "--dev_file", tmp_path / "dev.json", "--format", "json",
               "--text_field", "text", "--label_field", "labels", *tiny_args(out, 50))
    results = json.loads((out / "results.json").read_text())
    assert results["dev"]["f1"] > 0.9, results["dev"]
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["cls_multi_label"] and config["cls_labels"] == ["cat", "dog", "fish"]
