"""finetune/sentence_embedding.py end to end on an STS-B subset: a tiny random encoder trained with
CoSENT beats itself before training (same run, same dev pairs); results, pair scores, embeddings
(.npy) and the whitening are written, and the best checkpoint predicts again on its own."""

import json
import os
import subprocess
import sys

import numpy as np

from .conftest import REPO_ROOT

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}


def run_recipe(*args):
    cmd = [sys.executable, "finetune/sentence_embedding.py", *map(str, args)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def test_cosent_training_beats_the_untrained_encoder_and_predicts(shared_data, tmp_path):
    sts = shared_data / "similarity" / "Chinese-STS-B"
    (tmp_path / "train.txt").write_text("".join(open(sts / "sts-b-train.txt", encoding="utf-8").readlines()[:800]),
                                        encoding="utf-8")
    dev_lines = open(sts / "sts-b-dev.txt", encoding="utf-8").readlines()[:200]
    (tmp_path / "dev.txt").write_text("".join(dev_lines), encoding="utf-8")
    (tmp_path / "texts.txt").write_text("一个男人在弹吉他。\n一个女人在切洋葱。\n一个人在弹吉他。\n", encoding="utf-8")
    out = tmp_path / "run"
    run_recipe("--train_file", tmp_path / "train.txt", "--dev_file", tmp_path / "dev.txt",
               "--tokenizer", REPO_ROOT / "pretrain" / "data" / "vocab.txt", "--model_preset", "roformer-tiny",
               "--model_overrides", json.dumps(TINY), "--objective", "cosent", "--pooling", "mean",
               "--max_seq_length", 40, "--per_device_batch_size", 32, "--max_steps", 50, "--learning_rate", 0.003,
               "--warmup_steps", 10, "--seed", 1, "--eval_batch_size", 128, "--eval_before_training", "true", "--whitening", "true",
               "--output_dir", out, "--predict", tmp_path / "dev.txt")
    results = json.loads((out / "results.json").read_text())
    before, after = results["before_training"], results["dev"]
    assert after["pairs"] == before["pairs"] == 200
    assert after["spearman"] > before["spearman"] + 5, (before, after)
    assert "spearman_whitened" in after and results["whitening_fit"].endswith("training sentences")
    scores = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(scores) == 200 and {"text_a", "text_b", "cosine", "cosine_whitened"} <= set(scores[0])
    assert (out / "whitening.npz").is_file()

    # the kept checkpoint alone: sentence embeddings of a text file
    run_recipe("--do_train", "false", "--model", out / "best", "--predict", tmp_path / "texts.txt",
               "--predict_kind", "embeddings", "--output_dir", tmp_path / "predict")
    vectors = np.load(tmp_path / "predict" / "embeddings.npy")
    assert vectors.shape == (3, TINY["hidden_size"]) and np.isfinite(vectors).all()
    cos = vectors @ vectors.T / np.outer(np.linalg.norm(vectors, axis=1), np.linalg.norm(vectors, axis=1))
    assert cos[0, 2] > cos[0, 1]  # "a man plays the guitar" is closer to "a person plays the guitar"
