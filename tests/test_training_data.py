"""Pretraining data path: reading (bad input), datasets loading, packing, masking on real text."""

import json

import pytest
import torch
from transformers import BertTokenizer

from suji_models.training.corpus import CorpusError, read_documents
from suji_models.training.data import (
    RowSource,
    StreamRows,
    clm_batch,
    encode_and_pack,
    load_corpus,
    mlm_batch,
    pack_segments,
)
from suji_models.training.loop import TrainArgs, build_optimizer, deepspeed_config
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
    with pytest.raises(CorpusError, match="needs the name of its text field"):
        read_documents(f)
    with pytest.raises(CorpusError, match=r"c.jsonl:2 \(field 'content'\): field missing"):
        read_documents(f, "content")
    docs, report = read_documents(f, "content", skip_bad_lines=True)
    assert docs == ["你好"] and len(report.skipped) == 1


def test_overlong_line_is_refused(tmp_path):
    f = tmp_path / "long.txt"
    f.write_bytes(b"a" * 1_100_000 + b"\n")
    with pytest.raises(CorpusError, match="long.txt:1: line of 1100001 bytes"):
        read_documents(f)


def test_tsv_and_the_tokenization_reader_agree(tmp_path):
    """Pretraining reads corpora with tokenization's reader: same files, same texts, same errors."""
    from tokenization import iter_texts

    (tmp_path / "a.tsv").write_text("id\tcontent\n1\t  甲乙  \n2\t\n3\t丙\n", encoding="utf-8")
    docs, report = read_documents(tmp_path, "content")
    assert docs == ["甲乙", "丙"] and report.files == 1
    assert [t.strip() for t in iter_texts(tmp_path, field="content")] == docs


def test_directory_of_files(tmp_path):
    (tmp_path / "a.txt").write_text("甲\n乙\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("丙\n")
    docs, report = read_documents(tmp_path)
    assert docs == ["甲", "乙", "丙"] and report.files == 2


@pytest.fixture(scope="module")
def tokenizer():
    from tokenization import load_tokenizer

    return load_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def clue_docs():
    from .conftest import SHARED

    docs, _ = read_documents(SHARED / "data" / "corpus" / "clue_corpus_small" / "CLUECorpusSmall_sampled.txt")
    return docs[:300]


@pytest.fixture(scope="module")
def packed(tokenizer, clue_docs):
    return encode_and_pack({"text": clue_docs}, tokenizer=tokenizer, max_length=128, whole_word=True)


def test_packing_keeps_every_token_and_wastes_under_5_percent(tokenizer, clue_docs, packed):
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    rows = packed["input_ids"]
    assert all(len(r) <= 128 for r in rows)
    content = [t for r in rows for t in r if t not in (cls, sep)]
    expected = [t for d in tokenizer(clue_docs, add_special_tokens=False)["input_ids"] for t in d]
    assert content == expected  # order kept, nothing dropped
    assert 1 - sum(map(len, rows)) / (len(rows) * 128) < 0.05
    for ids, docs in zip(rows, packed["document_ids"]):  # every segment is [CLS] ... [SEP]
        for d in set(docs):
            seg = [t for t, x in zip(ids, docs) if x == d]
            assert seg[0] == cls and seg[-1] == sep and cls not in seg[1:-1]


def test_long_documents_are_chunked_not_truncated(tokenizer):
    long = "中国人民银行今天宣布" * 40  # 400 chars
    out = pack_segments(tokenizer([long], add_special_tokens=False)["input_ids"], None, 64,
                        tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert sum(len(r) - 2 * len(set(d)) for r, d in zip(out["input_ids"], out["document_ids"])) == 400


def test_whole_word_masking_on_real_text(tokenizer, clue_docs, packed):
    """Masked fraction near 15% of maskable tokens, and every jieba word masked whole or not at all."""
    rows = [dict(input_ids=i, document_ids=d, word_ids=w)
            for i, d, w in zip(packed["input_ids"], packed["document_ids"], packed["word_ids"])]
    batch = mlm_batch(rows, tokenizer=tokenizer, generator=torch.Generator().manual_seed(0))
    labels, words = batch["labels"], torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(r["word_ids"]) for r in rows], batch_first=True, padding_value=-1)
    chosen = labels != -100
    maskable = words >= 0
    fraction = chosen.sum() / maskable.sum()
    assert 0.12 < fraction < 0.18  # whole words: the token fraction varies with word lengths
    multi_char_words = 0
    for r in range(len(rows)):
        for w in words[r][maskable[r]].unique():
            in_word = chosen[r][words[r] == w]
            assert in_word.all() or not in_word.any()
            multi_char_words += int(in_word.numel() > 1 and in_word.all())
    assert multi_char_words > 100  # real multi-character words were masked together
    assert chosen[maskable].any() and not chosen[~maskable].any()


def test_clm_labels_skip_padding_and_segment_starts(tokenizer):
    rows = [dict(input_ids=[2, 10, 11, 3, 2, 12, 3], document_ids=[0, 0, 0, 0, 1, 1, 1]),
            dict(input_ids=[2, 13, 3], document_ids=[0, 0, 0])]
    batch = clm_batch(rows, tokenizer=tokenizer)
    assert batch["labels"].tolist() == [[2, 10, 11, 3, -100, 12, 3], [2, 13, 3, -100, -100, -100, -100]]
    assert batch["document_ids"][1].tolist() == [0, 0, 0, -1, -1, -1, -1]


def test_load_corpus_text_jsonl_saved_and_streaming(tmp_path):
    import datasets

    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"content": f"第{i}篇新闻", "title": f"标题{i}"},
                                                              ensure_ascii=False) for i in range(20)))
    ds, report = load_corpus(tmp_path / "a.jsonl", "content")
    assert ds["text"][:2] == ["第0篇新闻", "第1篇新闻"] and report.documents == 20
    pairs, _ = load_corpus(tmp_path / "a.jsonl", fields=["content", "title"])
    assert pairs[3] == {"content": "第3篇新闻", "title": "标题3"}
    (tmp_path / "b.tsv").write_text("title\tcontent\n标题0\t第0篇\n标题1\t第1篇\n", encoding="utf-8")
    tsv, _ = load_corpus(tmp_path / "b.tsv", fields=["content", "title"])
    assert tsv[1] == {"content": "第1篇", "title": "标题1"}
    datasets.Dataset.from_dict({"body": ["甲乙丙", "丁戊"]}).save_to_disk(tmp_path / "saved")
    saved, _ = load_corpus(tmp_path / "saved", "body")
    assert saved["text"] == ["甲乙丙", "丁戊"]
    with pytest.raises(CorpusError, match=r"saved dataset has no column\(s\) \['text'\]"):
        load_corpus(tmp_path / "saved")
    stream, _ = load_corpus(tmp_path / "a.jsonl", "content", streaming=True)
    assert list(stream.take(2)) == [{"text": "第0篇新闻"}, {"text": "第1篇新闻"}]


def test_load_corpus_reports_bad_lines_through_datasets(tmp_path, caplog):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"text": "好"}) + "\n" + json.dumps({"other": 1}) + "\n")
    with pytest.raises(CorpusError, match=r"bad.jsonl:2 \(field 'text'\): field missing"):
        load_corpus(f, "text")
    ds, report = load_corpus(f, "text", skip_bad_lines=True)
    assert len(ds) == 1 and len(report.skipped) == 1
    stream, _ = load_corpus(f, "text", skip_bad_lines=True, streaming=True)
    with caplog.at_level("WARNING"):
        assert list(stream) == [{"text": "好"}]
    assert "skipped bad line" in caplog.text and "bad.jsonl:2" in caplog.text


def test_row_sources_split_ranks_and_epochs(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"input_ids": [[i] for i in range(10)]})
    source = RowSource(ds, batch_size=2, seed=0)
    seen = [r["input_ids"][0] for step in range(5) for rank in range(2) for r in source.rows(step, rank, 2)]
    assert sorted(seen[:10]) == list(range(10))  # the first epoch covers every row exactly once
    assert source.rows(3, 1, 2) == RowSource(ds, 2, 0).rows(3, 1, 2)  # a pure function of (step, rank)
    stream = StreamRows(ds.to_iterable_dataset(), batch_size=2)
    ranks = [StreamRows(ds.to_iterable_dataset(), 2) for _ in range(2)]
    got = [r["input_ids"][0] for step in range(2) for rank, s in enumerate(ranks) for r in s.rows(step, rank, 2)]
    assert len(set(got)) == 8  # disjoint shards
    resumed = StreamRows(ds.to_iterable_dataset(), 2)  # resuming at step 1 skips step 0's rows
    assert stream.rows(0, 0, 1) + stream.rows(1, 0, 1) == [{"input_ids": [i]} for i in range(4)]
    assert resumed.rows(1, 0, 1) == [{"input_ids": [2]}, {"input_ids": [3]}]
    with pytest.raises(RuntimeError, match="read in order"):
        resumed.rows(5, 0, 1)


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


def test_fused_adamw_by_default_and_same_update_as_foreach():
    import suji_models as S

    torch.manual_seed(0)
    model = S.SujiForMaskedLM(S.SujiConfig.from_preset("bert-tiny"))
    fused = build_optimizer(model, TrainArgs())
    assert fused.defaults["fused"] and not fused.defaults["foreach"]
    twin = S.SujiForMaskedLM(model.config)
    twin.load_state_dict(model.state_dict())
    foreach = build_optimizer(twin, TrainArgs(fused_adamw=False))
    assert foreach.defaults["foreach"] and not foreach.defaults["fused"]
    for step in range(3):
        for m in (model, twin):
            torch.manual_seed(step)
            for p in m.parameters():
                p.grad = torch.randn_like(p)
        fused.step()
        foreach.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    no_decay = {id(p) for p in fused.param_groups[1]["params"]}
    assert all(id(p) in no_decay for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n)


def test_head_learning_rate_applies_to_the_parameters_outside_the_encoder_only():
    import suji_models as S
    from suji_models.training.finetune import UsageError, _with_head_learning_rate
    from suji_models.training.loop import StepHooks, lr_lambda

    model = S.SujiForSequenceClassification(S.SujiConfig.from_preset("bert-tiny", num_labels=3))
    args = TrainArgs(learning_rate=1e-4, warmup_steps=2, max_steps=10)
    optimizer = _with_head_learning_rate(None, 1e-2).optimizer(model, args)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert lr_of[id(p)] == (1e-4 if name.startswith("suji.") else 1e-2), name
    assert any(not n.startswith("suji.") for n, _ in model.named_parameters())  # the classifier is the head
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(model.classifier.weight)] == 0.01 and decays[id(model.classifier.bias)] == 0.0
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args))  # warm-up scales both rates
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.5e-4, 0.5e-2])
    del schedule
    assert _with_head_learning_rate(None, 0.0) is None  # off: the loop's own AdamW
    with pytest.raises(UsageError, match="--head_learning_rate"):
        _with_head_learning_rate(StepHooks(optimizer=lambda model, args: None), 1e-2)


def test_length_grouped_rows_cover_each_epoch_with_less_padding():
    lengths = [int(x) for x in torch.randint(1, 200, (400,), generator=torch.Generator().manual_seed(1))]
    rows, batch = list(range(400)), 8
    grouped, plain = RowSource(rows, batch, seed=3, lengths=lengths, group_batches=10), RowSource(rows, batch, 3)

    def padding(source):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in (source.indices(t, 0, 1) for t in range(50)))

    epoch = [i for t in range(50) for i in grouped.indices(t, 0, 1)]
    assert sorted(epoch) == rows  # every row once per epoch
    assert padding(grouped) < padding(plain) / 4
    second = [i for t in range(50, 100) for i in grouped.indices(t, 0, 1)]
    assert sorted(second) == rows and second != epoch  # reshuffled each epoch
    # a pure function of the global micro-batch: 2 ranks read what 1 process reads, interleaved
    two = [i for t in range(25) for r in range(2) for i in grouped.indices(t, r, 2)]
    assert two == epoch
    assert grouped.indices(7, 0, 1) == RowSource(rows, batch, 3, lengths, 10).indices(7, 0, 1)
    with pytest.raises(ValueError, match="3 lengths for 400 rows"):
        RowSource(rows, batch, 3, lengths[:3])
