"""finetune/reading_comprehension.py end to end, once per method: a tiny model trained for a few dozen
steps on the questions of six CMRC2018 passages answers them better than the same model untrained (a
pipeline check: windows, targets, decoding and offsets line up; generalization to held-out passages is
what the recipe's results table measures), and --predict writes {id, answer} JSONL plus the official
prediction JSON, every answer a piece of its passage."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import suji_models as S
from suji_models.tasks.mrc import (
    MrcLayout, encode_rows, model_class_for, mrc_counts, mrc_scores, passage_windows, predict_mlm,
    predict_seq2seq, predict_span, read_squad,
)
from tokenization import load_tokenizer

from .conftest import REPO_ROOT

TOKENIZER = REPO_ROOT.parent / "shared" / "models" / "suji-roformer-small-zh"
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
SETTINGS = {  # method: (answer tokens, steps, learning rate)
    "span": (16, 60, 3e-3),
    "seq2seq": (8, 80, 1e-2),
    "mlm": (8, 100, 5e-3),
}


def untrained_f1(method, examples, answer_tokens, seed):
    """The same architecture and initialization as the run's, untrained, on the same questions."""
    tokenizer = load_tokenizer(TOKENIZER)
    config = S.SujiConfig.from_preset_options("roformer-tiny", TINY, 128, vocab_size=len(tokenizer),
                                              pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = model_class_for(method)(config).eval()
    layout = MrcLayout(method, 128, 24, answer_tokens)
    questions = [tokenizer(ex.question, add_special_tokens=False)["input_ids"][:24] for ex in examples]
    windows = passage_windows(tokenizer, examples, layout.room, 16)
    rows = encode_rows(tokenizer, layout, examples, windows, questions, False)
    forward = lambda batch: model(**batch)  # noqa: E731
    with torch.no_grad():
        if method == "span":
            answers = predict_span(forward, examples, windows, rows, tokenizer.pad_token_id, 64, answer_tokens)
        elif method == "mlm":
            answers = predict_mlm(forward, examples, windows, rows, tokenizer, answer_tokens, 64, always_answer=True)
        else:
            answers = predict_seq2seq(model, examples, windows, rows, tokenizer, answer_tokens, 64, always_answer=True)
    return mrc_scores(mrc_counts([ex.references for ex in examples], answers))["f1"]


# span runs in the default suite; the generative two need more steps to learn token identities (~2x the
# time), so they run with `-m slow`.
@pytest.mark.parametrize("method", ["span", pytest.param("seq2seq", marks=pytest.mark.slow),
                                    pytest.param("mlm", marks=pytest.mark.slow)])
def test_recipe_beats_an_untrained_model_and_predicts(shared_data, tmp_path, method):
    data = json.loads((shared_data / "mrc" / "cmrc2018" / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"version": "v1", "data": data["data"][:6]}, ensure_ascii=False), encoding="utf-8")
    first = data["data"][0]["paragraphs"][0]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": qa["id"], "question": qa["question"], "context": first["context"]},
                                            ensure_ascii=False) + "\n" for qa in first["qas"]), encoding="utf-8")
    answer_tokens, steps, lr = SETTINGS[method]
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "finetune/reading_comprehension.py", "--method", method, "--train_file", train,
           "--dev_file", train, "--tokenizer", TOKENIZER, "--model_preset", "roformer-tiny",
           "--model_overrides", json.dumps(TINY), "--max_seq_length", 128, "--max_question_tokens", 24,
           "--max_answer_tokens", answer_tokens, "--overlap", 16, "--no_answer_windows", 0.2,
           "--per_device_batch_size", 16, "--max_steps", steps, "--eval_steps", steps, "--learning_rate", lr,
           "--warmup_steps", 10, "--log_steps", 20, "--seed", 1, "--output_dir", out, "--predict", questions]
    run = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    trained = float(re.search(r"summary: dev f1 ([\d.]+)", log).group(1))
    examples = read_squad(train)
    baseline = untrained_f1(method, examples, answer_tokens, seed=1)
    assert trained > baseline + 5, (trained, baseline, log[-2000:])

    results = json.loads((out / "results.json").read_text())
    assert results["dev"]["questions"] == len(examples) and results["dev"]["answers_per_second"] > 0
    assert "input_report" in results and "passages" in results
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    official = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in records] == [qa["id"] for qa in first["qas"]]
    assert official == {r["id"]: r["answer"] for r in records}
    for record in records:
        assert record["answer"] and record["answer"] in first["context"]
