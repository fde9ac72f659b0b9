"""finetune/summarization.py end to end on CSL (abstract -> title), one smoke run per stage: a tiny model
trained for a few dozen steps beats the same architecture untrained on held-out pairs; the pipeline
stage chains the extractor's checkpoint into the generator and writes {id, summary} predictions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import suji_models as S
from suji_models.tasks.summarization import (
    SujiForSentenceExtraction,
    SujiForSummarization,
    extract_summaries,
    generate_summaries,
    prepare_extraction,
    read_summaries,
)
from suji_models.tasks.text_metrics import summary_counts, summary_scores
from tokenization import load_tokenizer

from .conftest import REPO_ROOT

VOCAB = REPO_ROOT / "pretrain" / "data" / "vocab.txt"
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


@pytest.fixture(scope="module")
def csl(shared_data, tmp_path_factory):
    """240 train / 60 dev CSL pairs (disjoint lines of the shared file) and a file to predict."""
    folder = tmp_path_factory.mktemp("csl")
    lines = (shared_data / "summarization" / "csl" / "dev.tsv").read_text(encoding="utf-8").splitlines(True)
    (folder / "train.tsv").write_text("".join(lines[:240]), encoding="utf-8")
    (folder / "dev.tsv").write_text("".join(lines[240:300]), encoding="utf-8")
    (folder / "docs.jsonl").write_text("".join(
        json.dumps({"id": f"doc{i}", "source": line.split("\t")[1]}, ensure_ascii=False) + "\n"
        for i, line in enumerate(lines[300:303])), encoding="utf-8")
    return folder


def recipe(data, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "finetune/summarization.py", "--format", "csl", "--train_file", data / "train.tsv",
           "--dev_file", data / "dev.tsv", "--tokenizer", VOCAB, "--model_preset", "roformer-tiny",
           "--model_overrides", json.dumps(TINY), "--per_device_batch_size", 16, "--learning_rate", 0.003,
           "--warmup_steps", 10, "--log_steps", 20, "--seed", 1, "--output_dir", out, *extra]
    run = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    return float(re.search(r"summary: dev rouge-l ([\d.]+)", log).group(1)), log


def untrained(model_class, **switches):
    tokenizer = load_tokenizer(VOCAB)
    torch.manual_seed(1)
    config = S.SujiConfig.from_preset("roformer-tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                      **TINY, **switches)
    return model_class(config).eval(), tokenizer


def rouge_l(predictions, examples):
    return summary_scores(summary_counts(predictions, [e.summary for e in examples]))["rouge-l"]


@pytest.fixture(scope="module")
def extractor(csl, tmp_path_factory):
    out = tmp_path_factory.mktemp("extract")
    score, log = recipe(csl, out, "--stage", "extract", "--max_seq_length", 256, "--max_steps", 50)
    return out, score, log


def test_extract_stage_beats_an_untrained_extractor(csl, extractor):
    out, trained, log = extractor
    assert "dev oracle extraction:" in log
    results = json.loads((out / "results.json").read_text())
    assert results["dev_oracle"]["rouge-l"] >= trained  # the oracle bounds the extractor (same sentences)
    dev = read_summaries(csl / "dev.tsv", "csl").examples
    for e in dev:
        prepare_extraction(e, 128, 256)
    model, tokenizer = untrained(SujiForSentenceExtraction)
    picks = extract_summaries(model, tokenizer, [e.sentences for e in dev], max_length=256)
    baseline = rouge_l(["".join(e.sentences[i] for i in p) for e, p in zip(dev, picks)], dev)
    assert trained > baseline + 0.5, (trained, baseline)


@pytest.mark.slow  # a training run of several minutes on 2 cores; CI runs -m slow
def test_generate_stage_with_copy_sparse_softmax_and_exposure_bias(csl, tmp_path):
    trained, log = recipe(csl, tmp_path / "gen", "--stage", "generate", "--copy", "true", "--sparse_softmax_k", 10,
                          "--exposure_bias_prob", 0.1, "--max_seq_length", 160, "--max_steps", 60)
    config = json.loads((tmp_path / "gen" / "best" / "config.json").read_text())
    assert config["copy_head"] is True and config["sparse_softmax_k"] == 10
    dev = read_summaries(csl / "dev.tsv", "csl").examples
    model, tokenizer = untrained(SujiForSummarization, copy_head=True, sparse_softmax_k=10)
    baseline = rouge_l(generate_summaries(model, tokenizer, [e.source for e in dev], max_source_tokens=125,
                                          no_repeat_ngram_size=3, copy=True, sparse_softmax_k=10), dev)
    assert trained > baseline + 1.0, (trained, baseline)


@pytest.mark.slow  # a training run of several minutes on 2 cores; CI runs -m slow
def test_pipeline_stage_predicts_id_and_summary(csl, extractor, tmp_path):
    trained, log = recipe(csl, tmp_path / "spaces", "--stage", "pipeline", "--extractor", extractor[0] / "best",
                          "--max_seq_length", 160, "--max_steps", 60, "--format", "csl",
                          "--predict", csl / "dev.tsv", "--predict_output", tmp_path / "pred.jsonl")
    dev = read_summaries(csl / "dev.tsv", "csl").examples
    model, tokenizer = untrained(SujiForSummarization)
    baseline = rouge_l(generate_summaries(model, tokenizer, [e.source for e in dev], max_source_tokens=125,
                                          no_repeat_ngram_size=3), dev)
    assert trained > baseline + 1.0, (trained, baseline)
    records = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [e.id for e in dev]
    assert all(set(r) == {"id", "summary"} and isinstance(r["summary"], str) for r in records)
    # predicting alone from the checkpoints, on JSONL documents without summaries
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "finetune/summarization.py", "--stage", "pipeline", "--do_train", "false",
           "--extractor", extractor[0] / "best", "--model", tmp_path / "spaces" / "best", "--format", "jsonl",
           "--predict", csl / "docs.jsonl", "--output_dir", tmp_path / "alone", "--max_seq_length", 160]
    run = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    records = [json.loads(line) for line in (tmp_path / "alone" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["doc0", "doc1", "doc2"]


def test_pipeline_without_extractor_is_a_usage_error(csl, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "finetune/summarization.py", "--stage", "pipeline", "--train_file", csl / "train.tsv",
           "--tokenizer", VOCAB, "--output_dir", tmp_path / "x"]
    run = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "--extractor" in run.stdout + run.stderr
