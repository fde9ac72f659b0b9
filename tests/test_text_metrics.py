"""Char-level ROUGE / BLEU / distinct-n against existing implementations and their formulas, on real pairs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from suji_models.tasks import text_metrics as M

CSL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "summarization" / "csl" / "dev.tsv"


def real_pairs(count=60, seed=0):
    """(candidate, reference) pairs from CSL: the title against a slice of its abstract, the
    abstract's first sentence, a shuffled title and another paper's title: low to high overlap."""
    rows = [line.rstrip("\n").split("\t") for line in CSL.open(encoding="utf-8")][:count]
    rng = random.Random(seed)
    pairs = []
    for i, (_, abstract, title) in enumerate(rows):
        shuffled = list(title)
        rng.shuffle(shuffled)
        pairs += [(abstract[:len(title) + 5], title), (abstract.split("，")[0], title),
                  ("".join(shuffled), title), (rows[(i + 1) % len(rows)][2], title), (title, title)]
    return pairs


def chars(text):
    """Characters without whitespace: the tokens every metric here scores."""
    return list("".join(text.split()))


class _Whitespace:
    def tokenize(self, text):
        return text.split()


@pytest.mark.skipif(not CSL.exists(), reason="needs ../shared/data")
def test_rouge_equals_rouge_score_package_on_real_pairs():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Whitespace())
    for cand, ref in real_pairs():
        # rouge-score(target, prediction) on space-separated characters
        expected = scorer.score(" ".join(ref), " ".join(cand))
        for ours, theirs in ((M.rouge_n(cand, ref, 1), expected["rouge1"]), (M.rouge_n(cand, ref, 2), expected["rouge2"]),
                             (M.rouge_l(cand, ref), expected["rougeL"])):
            assert ours["p"] == pytest.approx(theirs.precision, abs=1e-12)
            assert ours["r"] == pytest.approx(theirs.recall, abs=1e-12)
            assert ours["f"] == pytest.approx(theirs.fmeasure, abs=1e-12)


@pytest.mark.skipif(not CSL.exists(), reason="needs ../shared/data")
@pytest.mark.parametrize("weights", [(0.25, 0.25, 0.25, 0.25), (1.0,), (0.5, 0.5)])
def test_sentence_bleu_equals_nltk_on_real_pairs(weights):
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    smoothing = bleu_score.SmoothingFunction().method1
    for cand, ref in real_pairs():
        expected = bleu_score.sentence_bleu([chars(ref)], chars(cand), weights=weights, smoothing_function=smoothing)
        assert M.bleu(cand, ref, weights=weights) == pytest.approx(expected, abs=1e-12)


@pytest.mark.skipif(not CSL.exists(), reason="needs ../shared/data")
def test_corpus_bleu_equals_nltk_with_several_references():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    pairs = real_pairs(30)
    cands = [c for c, _ in pairs]
    refs = [[r, r[: len(r) // 2 + 1]] for _, r in pairs]
    expected = bleu_score.corpus_bleu([[chars(x) for x in rs] for rs in refs], [chars(c) for c in cands])
    assert M.corpus_bleu(cands, refs) == pytest.approx(expected, abs=1e-12)


def test_whitespace_is_not_a_character_and_lcs_is_a_subsequence():
    assert M.rouge_n("深度 学习", "深度学习", 2)["f"] == 1.0
    assert M.lcs_length("abcbdab", "bdcaba") == 4  # the textbook example (CLRS)
    assert M.rouge_l("", "标题")["f"] == 0.0 and M.rouge_n("标题", "", 1)["f"] == 0.0


def test_cail_score_weights_and_summary_means():
    cand, ref = "基于深度学习的文本摘要方法", "一种文本摘要的深度学习方法"
    r = M.rouge(cand, ref)
    assert M.cail_score(cand, ref) == pytest.approx(0.2 * r["rouge-1"] + 0.4 * r["rouge-2"] + 0.4 * r["rouge-l"])
    counts = M.summary_counts([cand, ref], [ref, ref])
    scores = M.summary_scores(counts)
    assert scores["n"] == 2
    assert scores["rouge-l"] == pytest.approx(100 * (r["rouge-l"] + 1.0) / 2)
    assert scores["cail"] == pytest.approx(0.2 * scores["rouge-1"] + 0.4 * scores["rouge-2"] + 0.4 * scores["rouge-l"])
    # sums add up: two halves counted apart give the same means as the whole
    assert M.summary_scores(M.summary_counts([cand], [ref]) + M.summary_counts([ref], [ref])) == scores


def test_distinct_n_by_brute_force():
    texts = ["我很好我很好", "你好", "", "好的好的好"]
    for n in (1, 2, 3):
        grams = [t[i:i + n] for t in texts for i in range(len(t) - n + 1)]
        assert M.distinct_n(texts, n) == pytest.approx(len(set(grams)) / len(grams))
    assert M.distinct_n(["a"], 2) == 0.0
