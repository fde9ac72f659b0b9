"""Metrics of generated text, on characters: ROUGE-1/2/L, BLEU, CAIL2020's summary score, distinct-n.

Chinese is scored on characters, as the bert4keras examples do (``' '.join(text)`` fed to the
``rouge`` package and to NLTK's ``sentence_bleu``); whitespace is not a character here.

- ROUGE-N: n-gram overlap (clipped counts); precision over the candidate's n-grams, recall over the
  reference's, F1. ROUGE-L: the longest common subsequence over both lengths, F1 (the sentence-level
  ``rougeL`` of Google's ``rouge-score``; tested against it).
- BLEU (Papineni et al.): geometric mean of clipped n-gram precisions times the brevity penalty
  (closest reference length); `smooth=True` is NLTK's ``SmoothingFunction().method1`` (a zero count
  becomes 0.1), the setting the bert4keras title-generation examples report. Sentence and corpus level.
- :func:`cail_score`: 0.2 ROUGE-1 + 0.4 ROUGE-2 + 0.4 ROUGE-L (F values), the score of the CAIL2020
  summarization track that SPACES ("SPACES：“抽取-生成”式长文本摘要（法研杯总结）") was built for.
- :func:`distinct_n`: distinct n-grams over all n-grams of a set of responses (Li et al. 2016), the
  diversity measure of dialogue generation.

Recipes sum per-example scores (:func:`summary_counts`) so that figures add up across ranks and
batches, and turn the sums into means with :func:`summary_scores`.
"""

from __future__ import annotations

import math
from collections import Counter


def char_tokens(text) -> list:
    """Characters of a string without whitespace; a list/tuple of tokens is returned as a list."""
    if isinstance(text, str):
        return [c for c in text if not c.isspace()]
    return list(text)


def ngrams(tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _prf(overlap: int, candidate_total: int, reference_total: int) -> dict:
    p = overlap / candidate_total if candidate_total else 0.0
    r = overlap / reference_total if reference_total else 0.0
    return {"p": p, "r": r, "f": 2 * p * r / (p + r) if p + r else 0.0}


def rouge_n(candidate, reference, n: int) -> dict:
    """{'p', 'r', 'f'} of ROUGE-N on characters (or on given token lists)."""
    cand, ref = ngrams(char_tokens(candidate), n), ngrams(char_tokens(reference), n)
    return _prf(sum((cand & ref).values()), sum(cand.values()), sum(ref.values()))


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence (O(len a * len b) time, O(len b) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate, reference) -> dict:
    """{'p', 'r', 'f'} of sentence-level ROUGE-L (LCS) on characters."""
    cand, ref = char_tokens(candidate), char_tokens(reference)
    return _prf(lcs_length(cand, ref), len(cand), len(ref))


def rouge(candidate, reference) -> dict:
    """F values {'rouge-1', 'rouge-2', 'rouge-l'} of one candidate against one reference."""
    return {"rouge-1": rouge_n(candidate, reference, 1)["f"], "rouge-2": rouge_n(candidate, reference, 2)["f"],
            "rouge-l": rouge_l(candidate, reference)["f"]}


def cail_score(candidate, reference) -> float:
    """CAIL2020 summarization score: 0.2 R1 + 0.4 R2 + 0.4 RL (F values, characters)."""
    scores = rouge(candidate, reference)
    return 0.2 * scores["rouge-1"] + 0.4 * scores["rouge-2"] + 0.4 * scores["rouge-l"]


# ---- BLEU ----------------------------------------------------------------------------------------


def _bleu_statistics(candidate, references, max_n: int):
    """Clipped n-gram matches and candidate n-gram totals for n = 1..max_n, candidate length and
    the closest reference length (ties: the shorter one), as BLEU and NLTK define them."""
    cand = char_tokens(candidate)
    refs = [char_tokens(r) for r in references]
    if not refs:
        raise ValueError("BLEU needs at least one reference")
    matches, totals = [], []
    for n in range(1, max_n + 1):
        counts = ngrams(cand, n)
        best = Counter()
        for ref in refs:
            best |= ngrams(ref, n)  # max count of each n-gram over the references
        matches.append(sum((counts & best).values()))
        totals.append(max(1, sum(counts.values())))  # NLTK: an empty denominator counts as 1
    closest = min((len(r) for r in refs), key=lambda length: (abs(length - len(cand)), length))
    return matches, totals, len(cand), closest


def _bleu_from_statistics(matches, totals, cand_len, ref_len, weights, smooth: bool, epsilon: float) -> float:
    if matches[0] == 0:
        return 0.0  # NLTK returns 0 when no unigram matches, smoothed or not
    log_precision = 0.0
    for w, m, t in zip(weights, matches, totals):
        if m == 0:
            if not smooth:
                return 0.0
            m = epsilon
        log_precision += w * math.log(m / t)
    brevity = 1.0 if cand_len > ref_len else (math.exp(1 - ref_len / cand_len) if cand_len else 0.0)
    return brevity * math.exp(log_precision)


def bleu(candidate, references, weights=(0.25, 0.25, 0.25, 0.25), smooth: bool = True,
         epsilon: float = 0.1) -> float:
    """Sentence BLEU of one candidate against one reference (a string) or several (a list of
    strings), on characters. `weights` sets the n-gram orders (BLEU-1: (1,), BLEU-2: (0.5, 0.5)).
    Equal to ``nltk.translate.bleu_score.sentence_bleu`` with ``SmoothingFunction().method1``
    (`smooth=True`) or without smoothing."""
    if isinstance(references, str):
        references = [references]
    stats = _bleu_statistics(candidate, references, len(weights))
    return _bleu_from_statistics(*stats, weights, smooth, epsilon)


def corpus_bleu(candidates, references, weights=(0.25, 0.25, 0.25, 0.25), smooth: bool = False,
                epsilon: float = 0.1) -> float:
    """Corpus BLEU: matches, totals and lengths summed over the corpus before the ratio (as NLTK's
    ``corpus_bleu``). `references[i]` is a string or a list of strings for `candidates[i]`."""
    n = len(weights)
    matches, totals, cand_len, ref_len = [0] * n, [0] * n, 0, 0
    for cand, refs in zip(candidates, references, strict=True):
        m, t, c, r = _bleu_statistics(cand, [refs] if isinstance(refs, str) else refs, n)
        matches = [a + b for a, b in zip(matches, m)]
        totals = [a + b for a, b in zip(totals, t)]
        cand_len, ref_len = cand_len + c, ref_len + r
    return _bleu_from_statistics(matches, totals, cand_len, ref_len, weights, smooth, epsilon)


# ---- diversity -------------------------------------------------------------------------------------


def distinct_n(texts, n: int) -> float:
    """Distinct-n: the number of distinct n-grams over the number of n-grams in all `texts`
    (strings on characters, or token lists); 0 when there is no n-gram."""
    seen, total = set(), 0
    for text in texts:
        grams = ngrams(char_tokens(text), n)
        seen.update(grams)
        total += sum(grams.values())
    return len(seen) / total if total else 0.0


# ---- sums that add up across batches and ranks -----------------------------------------------------

SUMMARY_METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu")


def summary_counts(candidates, references) -> Counter:
    """Per-example ROUGE-1/2/L F, smoothed sentence BLEU, summed, and the example count 'n'."""
    counts = Counter()
    for cand, ref in zip(candidates, references, strict=True):
        scores = rouge(cand, ref)
        scores["bleu"] = bleu(cand, ref)
        for key, value in scores.items():
            counts[key] += value
        counts["n"] += 1
    return counts


def summary_scores(counts) -> dict:
    """Means of :func:`summary_counts` sums, in percent, plus 'cail' = 0.2 R1 + 0.4 R2 + 0.4 RL."""
    n = counts.get("n", 0)
    scores = {key: 100 * counts.get(key, 0.0) / n if n else 0.0 for key in SUMMARY_METRICS}
    scores["cail"] = 0.2 * scores["rouge-1"] + 0.4 * scores["rouge-2"] + 0.4 * scores["rouge-l"]
    scores["n"] = n
    return scores


__all__ = [
    "char_tokens", "ngrams", "rouge_n", "rouge_l", "lcs_length", "rouge", "cail_score", "bleu", "corpus_bleu",
    "distinct_n", "summary_counts", "summary_scores", "SUMMARY_METRICS",
]
