"""Word segmentation (jieba / rjieba) and word boundaries for Chinese whole-word masking.

Chinese BERT sees one token per character, so "whole word" masking needs an external segmenter to
say which characters form a word. :func:`word_boundaries` returns, for a batch of texts, the token
ids and for every token the index of the jieba word it belongs to.

Segmentation is the bottleneck of that pipeline. Measured by ``bench/tokenization_speed.py`` on the shared
corpus (numbers in the README): rjieba (jieba-rs, the same dictionary) segments 15-25x faster than
python jieba, which multiprocessing cannot match on a few cores. Without HMM both give identical
words; with HMM every rjieba boundary is also a jieba boundary (precision 1.0) and rjieba finds
99.2-99.8% of jieba's (it keeps runs such as ``4220-4230`` or ``DVD-RW`` whole where jieba's HMM
path splits at ``-``/``.``; Chinese words agree). So ``rjieba`` is the default engine; python
``jieba`` stays available (``Segmenter("jieba")``, optionally in worker processes).
"""

from __future__ import annotations

import itertools
import os
import re
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

# jieba's own user-dictionary line format: "word [freq] [tag]" (copied so both engines parse alike).
_USERDICT_LINE = re.compile(r"^(.+?)( [0-9]+)?( [a-z]+)?$", re.U)

ENGINES = ("rjieba", "jieba")


def read_user_dict(user_dict) -> list[tuple[str, int | None, str | None]]:
    """Parse a jieba user dictionary (a path, or an iterable of lines) into (word, freq, tag)."""
    if isinstance(user_dict, (str, os.PathLike)):
        path = Path(user_dict)
        lines = []
        with open(path, "rb") as handle:
            for lineno, raw in enumerate(handle, 1):
                try:
                    lines.append(raw.decode("utf-8").lstrip("\ufeff"))
                except UnicodeDecodeError:
                    raise ValueError(f"{path}:{lineno}: user dictionary is not valid UTF-8") from None
    else:
        lines = list(user_dict)
    entries = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        word, freq, tag = _USERDICT_LINE.match(line).groups()
        entries.append((word, int(freq) if freq else None, tag.strip() if tag else None))
    return entries


class Segmenter:
    """jieba exact-mode word segmentation with a choice of engine.

    ``engine``: ``"rjieba"`` (jieba-rs, default, ~20x faster) or ``"jieba"`` (the reference).
    ``hmm``: jieba's HMM for out-of-dictionary words (jieba's default is True; WoBERT/RoFormer and
    transformers' CPM tokenizer use False).
    ``user_dict``: a jieba user dictionary (path or lines ``word [freq] [tag]``); it is loaded into
    a private dictionary, so two segmenters with different user words never interfere.

    Instances pickle by configuration (the dictionary is rebuilt lazily), so they can be sent to
    worker processes and ``datasets.map(num_proc=...)``.
    """

    def __init__(self, engine: str = "rjieba", hmm: bool = True, user_dict=None):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        self.engine, self.hmm = engine, bool(hmm)
        self.user_words = read_user_dict(user_dict) if user_dict is not None else []
        self._impl = None
        self._pool, self._pool_workers = None, 0  # worker processes, kept between cut_batch calls

    def __repr__(self):
        return f"Segmenter(engine={self.engine!r}, hmm={self.hmm}, user_words={len(self.user_words)})"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_impl"] = state["_pool"] = None
        return state

    def close(self):
        """Stop the worker processes of ``cut_batch(workers=...)`` (also done at interpreter exit)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _load(self):
        if self.engine == "rjieba":
            import rjieba

            if self.user_words:
                impl = rjieba.Jieba()
                for word, freq, tag in self.user_words:
                    impl.add_word(word, freq, tag)
            else:
                # the module's default instance: one dictionary load shared by every tokenizer
                impl = getattr(rjieba, "_DEFAULT_JIEBA", None) or rjieba.Jieba()
            hmm = self.hmm
            self._impl = lambda text: impl.cut(text, hmm)
        else:
            import jieba

            if self.user_words:
                impl = jieba.Tokenizer()
                for word, freq, tag in self.user_words:
                    impl.add_word(word, freq, tag)
            else:
                impl = jieba.dt
            hmm = self.hmm
            self._impl = lambda text: list(impl.cut(text, HMM=hmm))
        return self._impl

    def user_dict_lines(self) -> list[str] | None:
        """The user words in jieba's "word [freq] [tag]" format (None without user words)."""
        if not self.user_words:
            return None
        return [" ".join(str(x) for x in entry if x is not None) for entry in self.user_words]

    def save_user_dict(self, directory, filename_prefix=None) -> tuple[str, ...]:
        """Write ``user_dict.txt`` next to a saved tokenizer (nothing without user words)."""
        lines = self.user_dict_lines()
        if not lines:
            return ()
        path = Path(directory) / f"{filename_prefix + '-' if filename_prefix else ''}user_dict.txt"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return (str(path),)

    def cut(self, text: str) -> list[str]:
        """Words of ``text``; they concatenate back to ``text`` exactly (whitespace included)."""
        return (self._impl or self._load())(text)

    def cut_batch(self, texts: Sequence[str], workers: int = 1) -> list[list[str]]:
        """Segment many texts, optionally in ``workers`` processes (only worth it for python jieba)."""
        if workers <= 1 or len(texts) < 2 * workers:
            cut = self._impl or self._load()
            return [cut(text) for text in texts]
        if self._pool is None or self._pool_workers != workers:
            self.close()
            self._pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(self,))
            self._pool_workers = workers
        chunk = max(1, len(texts) // (workers * 8))
        return list(self._pool.map(_cut_in_worker, texts, chunksize=chunk))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of the words of ``text``."""
        ends = list(itertools.accumulate(map(len, self.cut(text))))
        return list(zip([0] + ends[:-1], ends))


_WORKER_SEGMENTER: Segmenter | None = None


def _init_worker(segmenter: Segmenter):
    global _WORKER_SEGMENTER
    _WORKER_SEGMENTER = segmenter
    segmenter._load()


def _cut_in_worker(text: str) -> list[str]:
    return _WORKER_SEGMENTER.cut(text)


def as_segmenter(segmenter) -> Segmenter:
    """Accept a Segmenter, an engine name, or None (the measured default: rjieba with HMM)."""
    if segmenter is None:
        return Segmenter("rjieba", hmm=True)
    if isinstance(segmenter, str):
        return Segmenter(segmenter, hmm=True)
    return segmenter


def word_boundaries(
    texts: Sequence[str],
    tokenizer,
    *,
    segmenter: Segmenter | str | None = None,
    add_special_tokens: bool = False,
    workers: int = 1,
) -> dict[str, list[list[int]]]:
    """Token ids plus, per token, the index of the jieba word it belongs to (whole-word masking input).

    ``tokenizer`` is a char-level fast tokenizer (``ChineseCharTokenizer`` or any transformers fast
    tokenizer whose offsets point into the original text) or a ``ChineseWordTokenizer`` (then its
    own jieba words are used and ``segmenter`` is ignored).

    Returns ``{"input_ids": [[...]], "word_ids": [[...]]}`` (a ``datasets.map(batched=True)``-ready
    dict): ``word_ids[i][j]`` is the 0-based word index in text ``i`` of token ``j``, and -1 for
    special tokens. Tokens of one word are consecutive and share an index; a word that produces no
    token (whitespace, control characters) leaves a gap in the numbering. Texts are not truncated:
    pack or cut them afterwards (``truncate_boundaries`` keeps the two lists aligned).
    """
    texts = list(texts)
    if getattr(tokenizer, "is_word_level", False):
        encoded = tokenizer(texts, add_special_tokens=add_special_tokens, truncation=False)
        word_ids = [[-1 if w is None else w for w in encoding.word_ids] for encoding in encoded.encodings]
        return {"input_ids": encoded["input_ids"], "word_ids": word_ids}

    segmenter = as_segmenter(segmenter)
    backend = tokenizer.backend_tokenizer
    # transformers leaves the last call's truncation/padding on the Rust tokenizer; we want neither.
    backend.no_truncation()
    backend.no_padding()
    # Segment in a helper thread while Rust encodes (encode_batch releases the GIL): +15% measured.
    # A pool per call, not a shared one: a thread pool does not survive fork (datasets num_proc).
    with ThreadPoolExecutor(1) as helper:
        segmented = helper.submit(segmenter.cut_batch, texts, workers)
        encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        words = segmented.result()

    all_word_ids = []
    for text, encoding, text_words in zip(texts, encodings, words):
        all_word_ids.append(_token_word_ids(text, encoding, text_words, add_special_tokens))
    return {"input_ids": [encoding.ids for encoding in encodings], "word_ids": all_word_ids}


def _token_word_ids(text: str, encoding, words: list[str], with_specials: bool) -> list[int]:
    # A string whose character at position c is chr(index of the word holding c): built by C-level
    # str.join/str.__mul__, then read once per token. ~4x cheaper than a per-word Python loop.
    if sum(map(len, words)) != len(text):  # never seen with jieba/rjieba; refuse rather than misalign
        raise ValueError("segmenter output does not concatenate back to the text")
    if len(words) >= 0x110000:
        raise ValueError("more than 1,114,111 words in one text")
    table = "".join(map(str.__mul__, map(chr, range(len(words))), map(len, words))) + chr(len(words) % 0x110000)
    if not with_specials:
        return [ord(table[start]) for start, _ in encoding.offsets]
    return [
        -1 if special else ord(table[start])
        for (start, _), special in zip(encoding.offsets, encoding.special_tokens_mask)
    ]


def word_spans_of_tokens(word_ids: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) token ranges of the words in one ``word_ids`` row (special tokens excluded)."""
    spans = []
    for word, group in itertools.groupby(enumerate(word_ids), key=lambda item: item[1]):
        positions = [position for position, _ in group]
        if word >= 0:
            spans.append((positions[0], positions[-1] + 1))
    return spans


def truncate_boundaries(row: dict, max_length: int) -> dict:
    """Cut one ``{"input_ids", "word_ids"}`` row to ``max_length`` tokens without splitting a word.

    The cut moves back to the start of the word that straddles ``max_length`` (unless that word
    alone is longer than ``max_length``), so a whole-word mask never sees half a word.
    """
    ids, word_ids = row["input_ids"], row["word_ids"]
    if len(ids) <= max_length:
        return row
    cut = max_length
    while cut > 0 and word_ids[cut] >= 0 and word_ids[cut - 1] == word_ids[cut]:
        cut -= 1
    cut = cut or max_length
    return {**row, "input_ids": ids[:cut], "word_ids": word_ids[:cut]}


def collator_offsets(word_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Synthetic ``offset_mapping`` that makes transformers' whole-word masking see jieba words.

    ``DataCollatorForLanguageModeling(whole_word_mask=True)`` starts a new word wherever a token's
    start offset differs from the previous token's end; Chinese characters are contiguous, so with
    real offsets a whole sentence is one "word". These offsets are contiguous inside a jieba word
    and leave a one-position gap between words. Special tokens get (0, 0).
    """
    offsets, position, previous = [], 0, None
    for word in word_ids:
        if word < 0:
            offsets.append((0, 0))
            previous = None
            continue
        if previous is not None and word != previous:
            position += 1  # the gap that marks a word start
        offsets.append((position, position + 1))
        position += 1
        previous = word
    return offsets


def boundary_agreement(reference: Iterable[list[str]], candidate: Iterable[list[str]]) -> dict[str, float]:
    """Agreement of two segmentations of the same texts: boundary precision/recall/F1, same words.

    Boundaries are the internal cut positions; ``identical_texts`` is the share of texts cut the
    same way, ``word_agreement`` the share of reference words (by span) the candidate also has.
    """
    tp = fp = fn = same = texts = words = shared_words = 0
    for ref, cand in zip(reference, candidate):
        ref_ends = list(itertools.accumulate(map(len, ref)))
        cand_ends = list(itertools.accumulate(map(len, cand)))
        ref_b, cand_b = set(ref_ends[:-1]), set(cand_ends[:-1])
        tp += len(ref_b & cand_b)
        fp += len(cand_b - ref_b)
        fn += len(ref_b - cand_b)
        same += ref == cand
        texts += 1
        ref_spans = set(zip([0] + ref_ends[:-1], ref_ends))
        cand_spans = set(zip([0] + cand_ends[:-1], cand_ends))
        words += len(ref_spans)
        shared_words += len(ref_spans & cand_spans)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "identical_texts": same / texts if texts else 1.0,
        "word_agreement": shared_words / words if words else 1.0,
    }


__all__ = [
    "Segmenter",
    "as_segmenter",
    "read_user_dict",
    "word_boundaries",
    "word_spans_of_tokens",
    "truncate_boundaries",
    "collator_offsets",
    "boundary_agreement",
]
