"""Word segmentation engines and whole-word-masking boundaries, checked against jieba itself."""

import os
import pickle
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jieba  # noqa: E402
import torch  # noqa: E402
from transformers import DataCollatorForLanguageModeling  # noqa: E402

from tokenization import ChineseCharTokenizer, ChineseWordTokenizer, build_char_vocab, iter_texts  # noqa: E402
from tokenization.words import (  # noqa: E402
    Segmenter,
    boundary_agreement,
    collator_offsets,
    truncate_boundaries,
    word_boundaries,
    word_spans_of_tokens,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEWS = DATA / "corpus/clue_corpus_small/CLUECorpusSmall_sampled.txt"


@pytest.fixture(scope="module")
def texts():
    news = list(iter_texts(NEWS, max_texts=150))
    weibo = list(iter_texts(DATA / "classification/smp2020_ewect/usual/dev.tsv", field="text_a", max_texts=600))
    return news + weibo + ["", "  ", "DVD-RW 4220-4230 iPhone12 \u200b😀👨‍👩‍👧"]


@pytest.fixture(scope="module")
def char_tokenizer():
    tokens = build_char_vocab(NEWS, vocab_size=8000, min_frequency=3, max_texts=1500)
    return ChineseCharTokenizer(tokens)


def test_rjieba_equals_jieba_without_hmm(texts):
    assert Segmenter("rjieba", hmm=False).cut_batch(texts) == [list(jieba.cut(t, HMM=False)) for t in texts]


def test_rjieba_boundaries_with_hmm_are_jieba_boundaries(texts):
    # Measured on the whole shared corpus (bench/tokenization_speed.py): precision 1.0, recall ~0.992;
    # rjieba keeps "4220-4230" / "DVD-RW" whole where python jieba's HMM path splits them.
    reference = [list(jieba.cut(t)) for t in texts]
    candidate = Segmenter("rjieba", hmm=True).cut_batch(texts)
    agreement = boundary_agreement(reference, candidate)
    assert agreement["precision"] > 0.999 and agreement["recall"] > 0.98
    assert candidate[-1][:3] == ["DVD-RW", " ", "4220-4230"] and reference[-1][:3] == ["DVD", "-", "RW"]


def test_user_dictionary_is_private_and_same_in_both_engines(texts):
    user_dict = ["兰州公交集团 100 nt", "靖远路站", "明起"]
    fast, reference = Segmenter("rjieba", False, user_dict), Segmenter("jieba", False, user_dict)
    sample = texts[:150]
    assert fast.cut_batch(sample) == reference.cut_batch(sample)
    assert "兰州公交集团" in fast.cut(sample[0]) and "兰州公交集团" not in Segmenter("rjieba", False).cut(sample[0])
    assert "兰州公交集团" not in jieba.lcut(sample[0])  # the global jieba dictionary is untouched


def test_user_dictionary_file(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_bytes("\ufeff靖远路站 50 ns\n\n明起\n".encode())
    assert Segmenter("rjieba", user_dict=path).user_words == [("靖远路站", 50, "ns"), ("明起", None, None)]
    path.write_bytes(b"\xff\xfe bad\n")
    with pytest.raises(ValueError, match="dict.txt:1: user dictionary is not valid UTF-8"):
        Segmenter("rjieba", user_dict=path)


def _check_against_words(texts, result, words_of, normalizer):
    """Tokens sharing a word id are consecutive and cover exactly the characters of that word.

    (A WordPiece that straddles two jieba words, e.g. "2k" in "4.2k" cut as 4.2|k, belongs to the
    word it starts in, so that group reaches into the next word: rare, counted, not exact.)
    """
    exact = groups = 0
    for text, word_ids, offsets in zip(texts, result["word_ids"], result["offsets"]):
        words = words_of(text)
        ends = [sum(map(len, words[: i + 1])) for i in range(len(words))]
        starts = [end - len(word) for end, word in zip(ends, words)]
        seen, covered = set(), []
        for start, end in word_spans_of_tokens(word_ids):
            word = word_ids[start]
            assert word not in seen  # one run of tokens per word
            seen.add(word)
            first, last = offsets[start][0], offsets[end - 1][1]
            assert starts[word] <= first < ends[word]
            covered.append((first, last))
            exact += text[first:last] == words[word]
            groups += 1
        # every word that BERT does not drop entirely has tokens (its own, or a straddling one)
        for i, word in enumerate(words):
            if normalizer.normalize_str(word).strip() and i not in seen:
                assert any(a <= starts[i] and ends[i] <= b for a, b in covered), word
    assert exact / groups > 0.999


def _with_offsets(texts, tokenizer, result):
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    assert encoded["input_ids"] == result["input_ids"]
    return {**result, "offsets": encoded["offset_mapping"]}


def test_word_boundaries_match_jiebas_own_segmentation(texts, char_tokenizer):
    segmenter = Segmenter("jieba", hmm=True)  # the reference engine, default settings
    result = word_boundaries(texts, char_tokenizer, segmenter=segmenter)
    words_of = lambda text: list(jieba.cut(text))  # noqa: E731
    normalizer = char_tokenizer.backend_tokenizer.normalizer
    _check_against_words(texts, _with_offsets(texts, char_tokenizer, result), words_of, normalizer)


def test_default_engine_boundaries(texts, char_tokenizer):
    result = word_boundaries(texts, char_tokenizer)  # rjieba with HMM, the measured default
    normalizer = char_tokenizer.backend_tokenizer.normalizer
    words_of = Segmenter("rjieba", hmm=True).cut
    _check_against_words(texts, _with_offsets(texts, char_tokenizer, result), words_of, normalizer)
    weibo = texts[150:160]
    with_specials = word_boundaries(weibo, char_tokenizer, add_special_tokens=True)
    assert all(row[0] == -1 and row[-1] == -1 for row in with_specials["word_ids"])
    assert with_specials["input_ids"] == char_tokenizer(weibo)["input_ids"]


def test_jieba_in_worker_processes_gives_the_same_words(texts):
    segmenter = Segmenter("jieba", hmm=True)
    assert segmenter.cut_batch(texts, workers=2) == segmenter.cut_batch(texts)
    assert pickle.loads(pickle.dumps(segmenter)).cut("我来到北京清华大学") == ["我", "来到", "北京", "清华大学"]


def test_word_level_tokenizer_reports_its_own_words(char_tokenizer):
    tokenizer = ChineseWordTokenizer(char_tokenizer.vocab_tokens() + ["北京", "清华大学"])
    result = word_boundaries(["我来到北京清华大学"], tokenizer)
    assert tokenizer.convert_ids_to_tokens(result["input_ids"][0]) == ["我", "来", "到", "北京", "清华大学"]
    assert result["word_ids"][0] == [0, 1, 1, 2, 3]


def test_truncation_never_splits_a_word():
    row = {"input_ids": list(range(8)), "word_ids": [-1, 0, 1, 1, 1, 2, 2, -1]}
    assert truncate_boundaries(row, 4)["word_ids"] == [-1, 0]  # 1 1 1 would be cut in half
    assert truncate_boundaries(row, 5)["word_ids"] == [-1, 0, 1, 1, 1]
    one_long_word = {"input_ids": [1, 2, 3], "word_ids": [0, 0, 0]}
    assert truncate_boundaries(one_long_word, 2)["word_ids"] == [0, 0]  # a word longer than the limit is cut


def test_transformers_whole_word_masking_uses_jieba_words(texts, char_tokenizer):
    length = 48
    rows = word_boundaries(texts[:150], char_tokenizer, add_special_tokens=True)
    examples = []
    for ids, word_ids in zip(rows["input_ids"], rows["word_ids"]):
        if len(ids) >= length:
            ids, word_ids = ids[:length], word_ids[:length]
            examples.append({
                "input_ids": ids,
                "special_tokens_mask": [int(w < 0) for w in word_ids],
                "offset_mapping": collator_offsets(word_ids),
                "word_ids": word_ids,
            })
    word_ids = torch.tensor([example.pop("word_ids") for example in examples])
    collator = DataCollatorForLanguageModeling(
        char_tokenizer, whole_word_mask=True, mlm_probability=0.3, mask_replace_prob=1.0, random_replace_prob=0.0,
        seed=0,
    )
    batch = collator(examples)
    masked = batch["labels"] != -100
    assert 0.1 < masked.float().mean() < 0.5
    for row_mask, row_words in zip(masked, word_ids):
        for word in row_words[row_mask].unique():
            assert row_mask[row_words == word].all()  # a masked word is masked entirely
    sizes = [(words == w).sum() for mask, words in zip(masked, word_ids) for w in words[mask].unique()]
    assert sum(size > 1 for size in sizes) > 20  # and words really span several characters
