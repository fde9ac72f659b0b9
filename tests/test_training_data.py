"""Pretraining data path: reading (bad input), packing, MLM masking statistics on real text."""

import json

import pytest
import torch
from transformers import BertTokenizer

from suji_models.training.data import CorpusError, pack_rows, read_documents
from suji_models.training.loop import TrainArgs, deepspeed_config
from suji_models.training.masking import mask_for_mlm

from .conftest import REPO_ROOT

VOCAB = REPO_ROOT / "pretrain" / "data" / "vocab.txt"


def test_missing_path_and_empty_corpus(tmp_path):
    with pytest.raises(CorpusError, match="nope.txt: no such file"):
        read_documents(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CorpusError, match="is empty"):
        read_documents(tmp_path / "empty.txt")


def test_invalid_utf8_names_file_and_line_or_is_counted(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("第一行\n".encode() + b"\xff\xfe broken\n" + "第三行\n".encode())
    with pytest.raises(CorpusError, match=r"bad.txt:2: invalid UTF-8"):
        read_documents(bad)
    docs, report = read_documents(bad, skip_bad_lines=True)
    assert docs == ["第一行", "第三行"]
    assert len(report.skipped) == 1 and "bad.txt:2" in report.skipped[0]
    assert "1 bad line(s) skipped" in report.summary()


def test_jsonl_field_errors(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"content": "你好"}, ensure_ascii=False) + "\n" + json.dumps({"title": "x"}) + "\n")
    with pytest.raises(CorpusError, match="need --text_field"):
        read_documents(f)
    with pytest.raises(CorpusError, match=r"c.jsonl:2: JSON object has no field 'content'"):
        read_documents(f, "content")
    docs, report = read_documents(f, "content", skip_bad_lines=True)
    assert docs == ["你好"] and len(report.skipped) == 1


def test_overlong_line_is_refused(tmp_path):
    f = tmp_path / "long.txt"
    f.write_bytes(b"a" * 1_100_000 + b"\n")
    with pytest.raises(CorpusError, match="long.txt:1: line of 1100001 bytes"):
        read_documents(f)


def test_directory_of_files(tmp_path):
    (tmp_path / "a.txt").write_text("甲\n乙\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("丙\n")
    docs, report = read_documents(tmp_path)
    assert docs == ["甲", "乙", "丙"] and report.files == 2


@pytest.fixture(scope="module")
def real_rows():
    from .conftest import SHARED

    tokenizer = BertTokenizer(vocab=str(VOCAB))
    docs, _ = read_documents(SHARED / "data" / "corpus" / "clue_corpus_small" / "CLUECorpusSmall_sampled.txt")
    ids = tokenizer(docs[:400], add_special_tokens=False)["input_ids"]
    return tokenizer, ids, pack_rows(ids, 128, tokenizer.cls_token_id, tokenizer.sep_token_id)


def test_packing_keeps_every_token_and_wastes_under_5_percent(real_rows):
    tokenizer, ids, rows = real_rows
    assert all(len(r) <= 128 and r[0] == tokenizer.cls_token_id for r in rows)
    stream = [t for r in rows for t in r[1:]]
    assert stream == [t for doc in ids for t in doc + [tokenizer.sep_token_id]]  # order kept, nothing dropped
    padding = 1 - sum(map(len, rows)) / (len(rows) * 128)
    assert padding < 0.05


def test_mlm_masking_statistics_on_real_text(real_rows):
    tokenizer, _, rows = real_rows
    ids = torch.tensor([r for r in rows if len(r) == 128])
    maskable = ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    gen = torch.Generator().manual_seed(0)
    corrupted, labels = mask_for_mlm(ids, mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                                     maskable=maskable, generator=gen)
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen]) and not chosen[~maskable].any()
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.01
    as_mask = (corrupted == tokenizer.mask_token_id)[chosen].float().mean()
    kept = (corrupted == ids)[chosen].float().mean()
    assert abs(as_mask - 0.8) < 0.02 and 0.09 < kept < 0.13  # 10% kept + random draws of the same token
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def test_whole_word_masking_masks_words_together():
    ids = torch.arange(10, 30).view(2, 10)
    word_ids = torch.tensor([[-1, 0, 0, 1, 1, 1, 2, 3, 3, -1], [-1, 0, 1, 1, 2, 2, 2, 2, 3, -1]])
    maskable = word_ids >= 0
    for seed in range(20):
        _, labels = mask_for_mlm(ids, mask_token_id=1, vocab_size=50, maskable=maskable, word_ids=word_ids,
                                 mask_prob=0.5, generator=torch.Generator().manual_seed(seed))
        chosen = labels != -100
        for row in range(2):
            for w in range(4):
                in_word = chosen[row][word_ids[row] == w]
                assert in_word.all() or not in_word.any()  # a word is masked whole or not at all


def test_deepspeed_config_contradiction_is_reported(tmp_path):
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match=r"train_micro_batch_size_per_gpu=8 contradicts the command line \(16\)"):
        deepspeed_config(TrainArgs(deepspeed_config=str(cfg), per_device_batch_size=16), world_size=2)
    filled = deepspeed_config(TrainArgs(deepspeed_config=str(cfg), per_device_batch_size=8,
                                        gradient_accumulation_steps=2), world_size=2)
    assert filled["train_batch_size"] == 32 and filled["bf16"]["enabled"] is False
