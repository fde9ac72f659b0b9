"""Reading comprehension (extractive question answering): readers, windows, the three methods'
encoding and decoding, answer voting and the CMRC2018 metric.

The answer to a question is a piece of its passage; three ways to find it (``--method``):

- ``span``: the extractive baseline of every Chinese MRC paper (BERT's SQuAD head). Rows are
  ``[CLS] question [SEP] passage [SEP]``; two logits per token give the answer's first and last
  token; :func:`best_spans` picks the best (first, last) under a maximum answer length, and the
  tokenizer's offsets map it back to the passage's own characters.
- ``seq2seq`` (UniLM), from "万能的seq2seq：基于seq2seq的阅读理解问答": rows are
  ``[CLS] passage [SEP] question [SEP] answer [SEP]`` with the loss on the answer only; decoding runs
  transformers' ``generate()`` with :class:`suji_models.generation.PassageSubstringLogitsProcessor`
  (the answer stays a piece of the passage at every step; ``[SEP]`` first = "no answer") and
  :class:`suji_models.generation.PassageVoteLogitsProcessor` (several passages / windows of one
  question vote on every next token).
- ``mlm`` ("non-autoregressive"), from "“非自回归”也不差：基于MLM的阅读理解问答": rows are
  ``[CLS] [MASK]*A [SEP] question [SEP] passage [SEP]``; the ``A`` answer slots are filled in one
  forward pass: the answer, then ``[SEP]``; the slots after it are empty (not trained, as in the
  post's code). :func:`decode_mlm_slots` reads them left to right under the same passage constraint
  (``[SEP]`` or ``[PAD]`` ends the answer, so empty slots decode to nothing), and
  :func:`vote_answers` merges passages as the post does.

Passages longer than the model window are cut into overlapping windows
(:func:`suji_models.tasks.windows.encode_windows`); each window is one row, and the answers of a
question's windows (and passages) are merged by :func:`vote_answers`.

Answers are character spans ``(start, end)`` of the passage, ``end`` exclusive. The metric is the
official CMRC2018 one (:func:`cmrc_f1`, :func:`cmrc_em`): its numbers are comparable with published
CMRC2018 results.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from ..configuration import SujiConfig
from ..modeling import SujiForMaskedLM, SujiForUniLM, SujiModel, SujiPreTrainedModel
from .readers import DataError, iter_json_objects, json_field

METHODS = ("span", "seq2seq", "mlm")


# ---- examples and bad-input reports -------------------------------------------------------------


@dataclass
class MrcExample:
    """One question over one or more passages (CMRC2018: one; DuReader: one per search document),
    answered once: the passages vote. `answers[k]` are the gold spans located in passage k
    ((start, end) characters; empty: no answer in that passage); `references` are all gold answer
    texts, for the metric; `group` is what a split keeps together (the passage, or the question)."""

    id: str
    question: str
    passages: list[str]
    answers: list[list[tuple[int, int]]] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    group: str = ""

    def __post_init__(self):
        if not self.answers:
            self.answers = [[] for _ in self.passages]

    @property
    def has_answer(self) -> bool:
        return any(self.answers)


@dataclass
class MrcReport:
    """Counted bad or odd input, each with where it was found (file, question id)."""

    counts: Counter = field(default_factory=Counter)
    cases: dict = field(default_factory=lambda: defaultdict(list))
    keep: int = 5  # cases kept per kind, for the summary

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] += 1
        if len(self.cases[kind]) < self.keep:
            self.cases[kind].append(where)

    def summary(self) -> str:
        if not self.counts:
            return "input: nothing to report"
        parts = [f"{kind}: {n} (e.g. {', '.join(self.cases[kind])})" for kind, n in sorted(self.counts.items())]
        return "input: " + "; ".join(parts)


def _locate(context: str, text: str, start, where: str, report: MrcReport):
    """The answer's (start, end) in `context`: at `start` when the text is there; otherwise the
    occurrence nearest to `start` (counted as realigned); None when the text is nowhere (counted)."""
    if not text.strip():
        report.add("empty answer text (dropped)", where)
        return None
    if isinstance(start, int) and start >= 0 and context[start:start + len(text)] == text:
        return start, start + len(text)
    found = [m.start() for m in re.finditer(re.escape(text), context)]
    if not found:
        report.add("answer text not in passage (kept for the metric only)", where)
        return None
    report.add("answer_start does not match the passage (realigned to the nearest occurrence)", where)
    best = min(found, key=lambda s: abs(s - start) if isinstance(start, int) and start >= 0 else s)
    return best, best + len(text)


def read_squad(path, report: MrcReport | None = None) -> list[MrcExample]:
    """SQuAD v1 JSON (CMRC2018): ``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question",
    "answers": [{"text", "answer_start"}]}]}]}]}``. A passage is the split group (its ``id`` when it has
    one, else file position). Answers are optional (prediction input). Empty questions are skipped
    and counted; answers whose ``answer_start`` is off are realigned or kept for the metric only."""
    path, report = Path(path), report if report is not None else MrcReport()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as why:
        raise DataError(f"{path}:{why.lineno}: not valid JSON ({why.msg})") from None
    articles = json_field(data, "data", f"{path}", list)
    examples = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(json_field(article, "paragraphs", f"{path}: data[{a}]", list)):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = json_field(paragraph, "context", where, str)
            group = str(paragraph.get("id", f"{a}.{p}"))
            for q, qa in enumerate(json_field(paragraph, "qas", where, list)):
                qid = str(json_field(qa, "id", f"{where}.qas[{q}]", (str, int)))
                at = f"{path}: question {qid}"
                question = json_field(qa, "question", f"{where}.qas[{q}]", str).strip()
                if not question:
                    report.add("empty question (skipped)", at)
                    continue
                spans, references = [], []
                for answer in qa.get("answers", []):
                    text = json_field(answer, "text", f"{at} answer", str)
                    references.append(text)
                    span = _locate(context, text, answer.get("answer_start"), at, report)
                    if span is not None and span not in spans:
                        spans.append(span)
                if references and not spans:
                    report.add("no answer located in the passage (not trained on; scored)", at)
                examples.append(MrcExample(qid, question, [context], [spans], references, group))
    return examples


def read_question_jsonl(path) -> list[MrcExample]:
    """Prediction input: JSON lines ``{"id", "question", "context"}`` (optional ``"answers"``: texts)."""
    examples = []
    for line, obj in iter_json_objects(path, with_lines=True):
        where = f"{path}:{line}"
        answers = obj.get("answers", [])
        qid = str(json_field(obj, "id", where, (str, int)))
        examples.append(MrcExample(qid, json_field(obj, "question", where, str), [json_field(obj, "context", where, str)],
                                   [], [str(a) for a in answers], qid))
    return examples


def _question_overlap(question: str, paragraph: str) -> float:
    """Share of the question's characters found in the paragraph (DuReader's paragraph choice)."""
    chars = set(question)
    return len(chars & set(paragraph)) / len(chars) if chars else 0.0


def read_dureader(path, report: MrcReport | None = None, max_passage_chars: int | None = None) -> list[MrcExample]:
    """DuReader 2.0 JSON lines: one question over several search documents. Each document gives one
    passage: its ``most_related_para`` (or, in test files that lack it, the paragraph sharing most
    characters with the question, as DuReader's baseline does). The gold span comes from
    ``fake_answers`` / ``answer_spans`` on the document ``answer_docs`` names; ``answers`` (free text)
    are the references. The question is the split group."""
    path, report = Path(path), report if report is not None else MrcReport()
    examples = []
    for line, obj in iter_json_objects(path, with_lines=True):
        where = f"{path}:{line}"
        qid = str(json_field(obj, "question_id", where, (str, int)))
        at = f"{path}: question {qid}"
        question = json_field(obj, "question", where, str).strip()
        if not question:
            report.add("empty question (skipped)", at)
            continue
        references = [str(a) for a in obj.get("answers", [])]
        answer_docs = obj.get("answer_docs", [])
        fake = (obj.get("fake_answers") or [None])[0]
        documents = json_field(obj, "documents", where, list)
        example = MrcExample(qid, question, [], [], references, qid)
        for d, document in enumerate(documents):
            paragraphs = json_field(document, "paragraphs", f"{where} documents[{d}]", list)
            if not paragraphs:
                report.add("document without paragraphs (skipped)", f"{at} document {d}")
                continue
            k = document.get("most_related_para")
            if not isinstance(k, int) or not 0 <= k < len(paragraphs):
                k = max(range(len(paragraphs)), key=lambda i: _question_overlap(question, paragraphs[i]))
            context = paragraphs[k]
            if max_passage_chars:
                context = context[:max_passage_chars]
            spans = []
            if answer_docs and d == answer_docs[0] and fake:
                span = _dureader_span(document, k, obj.get("answer_spans"), fake, context, at, report)
                if span is not None:
                    spans.append(span)
            example.passages.append(context)
            example.answers.append(spans)
        if not example.passages:
            report.add("question without passages (skipped)", at)
            continue
        if answer_docs and fake and not example.has_answer:
            report.add("no answer located in any passage (not trained on; scored)", at)
        examples.append(example)
    return examples


def _dureader_span(document, k, answer_spans, fake: str, context: str, at: str, report: MrcReport):
    """DuReader's gold span is in words of ``segmented_paragraphs``, which are the paragraph with its
    whitespace removed: the word span maps to characters through the non-space characters; else
    the fake answer is searched in the paragraph."""
    words = (document.get("segmented_paragraphs") or [None] * (k + 1))[k]
    visible = [i for i, c in enumerate(context) if not c.isspace()]  # non-space char -> paragraph index
    if words and answer_spans and "".join(words) == "".join(context[i] for i in visible):
        first, last = answer_spans[0]
        start = len("".join(words[:first]))
        end = start + len("".join(words[first:last + 1]))
        if 0 <= start < end <= len(visible):
            return visible[start], visible[end - 1] + 1
    # else: the fake answer, its whitespace ignored, among the paragraph's non-space characters
    squeezed, wanted = "".join(context[i] for i in visible), "".join(fake.split())
    found = squeezed.find(wanted) if wanted else -1
    if found >= 0:
        report.add("answer_spans do not fit the segmented paragraph (found the fake answer)", at)
        return visible[found], visible[found + len(wanted) - 1] + 1
    return _locate(context, fake, -1, at, report)


def read_mrc(path, format: str = "auto", report: MrcReport | None = None) -> list[MrcExample]:
    """By format: 'squad' (SQuAD / CMRC2018 JSON), 'dureader' (DuReader JSON lines), 'jsonl'
    ({id, question, context} lines); 'auto' looks at the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if format == "auto":
        with path.open(encoding="utf-8") as handle:
            head = handle.read(4000)
        if '"data"' in head and '"paragraphs"' in head:
            format = "squad"
        elif '"documents"' in head:
            format = "dureader"
        elif head.lstrip().startswith("{"):
            format = "jsonl"
        else:
            raise DataError(f"{path}: neither SQuAD JSON, DuReader JSON lines nor {{id, question, context}} lines")
    readers = {"squad": read_squad, "dureader": read_dureader}
    if format in readers:
        return readers[format](path, report)
    if format == "jsonl":
        return read_question_jsonl(path)
    raise ValueError(f"unknown MRC format {format!r}: squad, dureader, jsonl or auto")


# ---- the CMRC2018 metric ------------------------------------------------------------------------

# The official evaluation script's punctuation list, verbatim (its '……' is two characters and so never
# matches the single characters it is compared with; ASCII , . ! ? ( ) are not in it).
CMRC_PUNCTUATION = frozenset(['-', ':', '_', '*', '^', '/', '\\', '~', '`', '+', '=',
                              '，', '。', '：', '？', '！', '“', '”', '；', '’', '《', '》', '……', '·', '、',
                              '「', '」', '（', '）', '－', '～', '『', '』'])
_CJK = re.compile(r"[\u4e00-\u9fa5]")


def _word_tokenize(text: str) -> list[str]:
    """The official script tokenizes non-Chinese runs with NLTK's word tokenizer (Treebank rules)."""
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer().tokenize(text)


def mixed_segmentation(text: str, remove_punctuation: bool = False) -> list[str]:
    """The official CMRC2018 segmentation: lower-cased and stripped; every Chinese character and
    every listed punctuation mark is one segment; runs of other characters are English words
    (NLTK). With `remove_punctuation`, the listed punctuation is dropped."""
    segments, run = [], ""
    for char in str(text).lower().strip():
        if remove_punctuation and char in CMRC_PUNCTUATION:
            continue
        if _CJK.match(char) or char in CMRC_PUNCTUATION:
            if run:
                segments.extend(_word_tokenize(run))
                run = ""
            segments.append(char)
        else:
            run += char
    if run:
        segments.extend(_word_tokenize(run))
    return segments


def strip_punctuation(text: str) -> str:
    """The official EM normalization: lower-cased, stripped, the listed punctuation removed."""
    return "".join(c for c in str(text).lower().strip() if c not in CMRC_PUNCTUATION)


def longest_common_substring(a, b) -> int:
    """Length of the longest common *contiguous* run of two sequences (the official `find_lcs`)."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def cmrc_f1(references, prediction: str) -> float:
    """Max over the references of the F1 between segment lists, with the longest common substring
    as the overlap (official CMRC2018: characters for Chinese, words for English)."""
    predicted = mixed_segmentation(prediction, remove_punctuation=True)
    scores = [0.0]
    for reference in references:
        gold = mixed_segmentation(reference, remove_punctuation=True)
        overlap = longest_common_substring(gold, predicted)
        if overlap:
            p, r = overlap / len(predicted), overlap / len(gold)
            scores.append(2 * p * r / (p + r))
    return max(scores)


def cmrc_em(references, prediction: str) -> float:
    """1.0 when the prediction equals a reference after :func:`strip_punctuation`, else 0.0."""
    predicted = strip_punctuation(prediction)
    return float(any(strip_punctuation(reference) == predicted for reference in references))


def mrc_counts(references, predictions) -> Counter:
    """Sums that add up across ranks: {'em', 'f1', 'questions'} for aligned lists of reference lists
    and predicted answers (a question without references counts as 0, as the official script)."""
    counts = Counter()
    for refs, prediction in zip(references, predictions, strict=True):
        counts["questions"] += 1
        if refs:
            counts["em"] += cmrc_em(refs, prediction)
            counts["f1"] += cmrc_f1(refs, prediction)
    return counts


def mrc_scores(counts) -> dict:
    """EM and F1 in percent, as the official script prints them."""
    n = counts["questions"]
    return {"em": 100.0 * counts["em"] / n if n else 0.0, "f1": 100.0 * counts["f1"] / n if n else 0.0,
            "questions": n}


# ---- span decoding ------------------------------------------------------------------------------


def best_spans(start_logits, end_logits, allowed, max_answer_tokens: int):
    """Per row, the (first, last, score) maximizing start[first] + end[last] over allowed tokens with
    first <= last < first + max_answer_tokens; (None, None, -inf) when a row allows no token.
    start_logits / end_logits / allowed: [batch, length]."""
    length = start_logits.shape[-1]
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]
    i = torch.arange(length, device=scores.device)
    band = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_answer_tokens)
    ok = band[None] & allowed.bool()[:, :, None] & allowed.bool()[:, None, :]
    scores = scores.masked_fill(~ok, float("-inf"))
    best, flat = scores.view(scores.shape[0], -1).max(-1)
    out = []
    for b in range(scores.shape[0]):
        if best[b] == float("-inf"):
            out.append((None, None, float("-inf")))
        else:
            out.append((int(flat[b]) // length, int(flat[b]) % length, float(best[b])))
    return out


def token_span_of_chars(offsets, start: int, end: int):
    """(first, last) tokens covering characters [start, end), over tokens with a non-empty offset;
    None when no token overlaps."""
    covering = [t for t, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    return (covering[0], covering[-1]) if covering else None


# ---- MLM slots and voting -----------------------------------------------------------------------


def passage_continuations(passage_ids, prefix) -> set:
    """Tokens that follow `prefix` somewhere in `passage_ids` (every token for an empty prefix)."""
    k, n = len(prefix), len(passage_ids)
    prefix = list(prefix)
    return {passage_ids[i + k] for i in range(n - k) if list(passage_ids[i:i + k]) == prefix}


def decode_mlm_slots(slot_log_probs, passage_ids, empty_ids, allow_empty: bool = True) -> tuple[tuple[int, ...], float]:
    """Fill the answer slots left to right, each with its most probable token among those that keep
    the answer a piece of the passage, or an "empty" token (``[PAD]``, ``[SEP]``) which ends the
    answer: trailing empty slots decode to nothing. Returns (answer token ids, mean probability of
    the chosen tokens, empty included), the per-passage score the MLM post votes with.
    `allow_empty=False`: the first slot may not end the answer (when the passage is not empty)."""
    probs = slot_log_probs.float().exp()
    answer, total, used = (), 0.0, 0
    empty_ids = list(empty_ids)
    for slot in range(probs.shape[0]):
        allowed = sorted(passage_continuations(passage_ids, answer))
        if answer or allow_empty or not allowed:
            allowed += empty_ids
        p = probs[slot, allowed]
        k = int(p.argmax())
        total, used = total + float(p[k]), used + 1
        if allowed[k] in empty_ids:
            break
        answer = answer + (allowed[k],)
    return answer, total / max(used, 1)


def vote_answers(candidates, how: str = "vote") -> tuple[str, float]:
    """Merge the (answer text, score) candidates of one question's passages / windows.
    'vote' (the MLM post): score(a) = sum(s^2) / (sum(s) + 1) over the passages that answered a, so
    an answer found confidently in several passages wins; 'max': the single best score (the span
    baseline's rule for windows). Empty answers ("no answer" in that passage) do not vote; ("", 0.0)
    when no passage answers."""
    by_answer = defaultdict(list)
    for text, score in candidates:
        if text:
            by_answer[text].append(score)
    if not by_answer:
        return "", 0.0
    if how == "max":
        merged = {a: max(s) for a, s in by_answer.items()}
    elif how == "vote":
        merged = {a: sum(x * x for x in s) / (sum(s) + 1) for a, s in by_answer.items()}
    else:
        raise ValueError(f"unknown vote {how!r}: vote or max")
    best = max(merged, key=lambda a: (merged[a], -len(a)))
    return best, merged[best]


# ---- windows and rows ---------------------------------------------------------------------------


@dataclass
class PassageWindow:
    """The passage tokens of one window: `ids` and their character `offsets` in passage `passage`
    of example `example`; `answer`: (first, last) tokens of the first gold answer that lies wholly
    inside the window, else None."""

    example: int
    passage: int
    ids: list[int]
    offsets: list[tuple[int, int]]
    answer: tuple[int, int] | None = None


def passage_windows(tokenizer, examples, room: int, overlap: int | None = None) -> list[PassageWindow]:
    """Every passage of every example cut into windows of at most `room` passage tokens that overlap
    by `overlap` tokens (the shared :func:`~suji_models.tasks.windows.encode_windows`); a passage
    shorter than `room` is one window, a longer one still gets an answer from its windows."""
    from .offsets import special_tokens
    from .windows import encode_windows

    where = [(e, k) for e, example in enumerate(examples) for k in range(len(example.passages))]
    prefix, suffix = special_tokens(tokenizer)
    windows = encode_windows(tokenizer, [examples[e].passages[k] for e, k in where],
                             room + len(prefix) + len(suffix), overlap)
    out = []
    for n, encoded in enumerate(windows.examples):
        e, k = where[windows.text_of(n)]
        body = slice(len(prefix), len(encoded.input_ids) - len(suffix))
        window = PassageWindow(e, k, encoded.input_ids[body], [tuple(o) for o in encoded.offsets[body]])
        for start, end in examples[e].answers[k]:
            span = token_span_of_chars(window.offsets, start, end)
            if span and window.offsets[span[0]][0] <= start and window.offsets[span[1]][1] >= end:
                window.answer = span
                break
        out.append(window)
    return out


def window_answer_text(example: MrcExample, window: PassageWindow, first: int, last: int) -> str:
    """The passage characters under window tokens first..last: the original text, not a detokenization."""
    return example.passages[window.passage][window.offsets[first][0]:window.offsets[last][1]]


def find_tokens(haystack, needle) -> int:
    """First index of the token run `needle` in `haystack`, -1 if absent."""
    k = len(needle)
    for i in range(len(haystack) - k + 1):
        if list(haystack[i:i + k]) == list(needle):
            return i
    return -1


@dataclass
class MrcLayout:
    """How one method lays a (question, window) pair out in a row; `room` passage tokens per window.

    - span:    [CLS] question [SEP] window [SEP]                (token types 0, then 1 from the window)
    - mlm:     [CLS] [MASK]*A [SEP] question [SEP] window [SEP] (all type 0, as the MLM post)
    - seq2seq: [CLS] window [SEP] question [SEP] answer [SEP]   (type 1 on answer + [SEP]: UniLM target)
    """

    method: str
    max_length: int
    max_question_tokens: int = 64
    max_answer_tokens: int = 32

    @property
    def room(self) -> int:
        fixed = 3 + self.max_question_tokens
        if self.method == "mlm":
            fixed += self.max_answer_tokens + 1
        elif self.method == "seq2seq":
            fixed += self.max_answer_tokens + 1
        if self.max_length - fixed < 8:
            raise ValueError(f"max_length {self.max_length} leaves {self.max_length - fixed} passage tokens for "
                             f"--method {self.method} (question {self.max_question_tokens}, answer "
                             f"{self.max_answer_tokens}): raise max_length or lower those")
        return self.max_length - fixed


def encode_rows(tokenizer, layout: MrcLayout, examples, windows, question_ids, with_target: bool,
                report: MrcReport | None = None) -> list[dict]:
    """One row per window (`question_ids[e]`: the tokens of example e's question). With
    `with_target`, the training target: span start/end (0, 0 = [CLS]: not in this window), MLM slot
    labels (answer tokens, [SEP], then -100: slots after the end are not trained, as in the MLM post's
    code; [SEP] first: no answer), seq2seq answer tokens (none: just [SEP]). The answer's tokens are the passage's own, so a target is always a piece of the passage."""
    cls, sep, mask, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id
    A = layout.max_answer_tokens
    rows = []
    for n, w in enumerate(windows):
        q = question_ids[w.example]
        answer = w.ids[w.answer[0]:w.answer[1] + 1] if (with_target and w.answer) else []
        if len(answer) > A and layout.method != "span":
            if report is not None:
                report.add(f"answer longer than {A} tokens (target cut)", examples[w.example].id)
            answer = answer[:A]
        if layout.method == "span":
            ids = [cls] + q + [sep] + w.ids + [sep]
            types = [0] * (len(q) + 2) + [1] * (len(w.ids) + 1)
            row = {"input_ids": ids, "token_type_ids": types, "passage_start": len(q) + 2}
            if with_target:
                row["start_positions"], row["end_positions"] = (
                    (w.answer[0] + len(q) + 2, w.answer[1] + len(q) + 2) if w.answer else (0, 0))
        elif layout.method == "mlm":
            ids = [cls] + [mask] * A + [sep] + q + [sep] + w.ids + [sep]
            row = {"input_ids": ids, "token_type_ids": [0] * len(ids)}
            if with_target:
                row["slot_labels"] = (answer + [sep] + [-100] * A)[:A]
        else:
            ids = [cls] + w.ids + [sep] + q + [sep]
            types = [0] * len(ids)
            if with_target:
                ids, types = ids + answer + [sep], types + [1] * (len(answer) + 1)
            row = {"input_ids": ids, "token_type_ids": types}
        row["window"] = n
        rows.append(row)
    return rows


def collate_rows(rows, method: str, pad_token_id: int, max_answer_tokens: int = 32, left_pad: bool = False) -> dict:
    """Padded tensors; training labels as each model's loss takes them (span: start/end positions;
    mlm: `labels` -100 except on the answer slots; seq2seq: `answer_targets`, the next token where it
    is in the answer segment, see :class:`SujiForUniLMAnswers`)."""
    width = max(len(r["input_ids"]) for r in rows)

    def pad(values, fill):
        extra = [fill] * (width - len(values))
        return extra + values if left_pad else values + extra

    batch = {
        "input_ids": torch.tensor([pad(r["input_ids"], pad_token_id) for r in rows]),
        "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows]),
        "token_type_ids": torch.tensor([pad(r["token_type_ids"], 0) for r in rows]),
    }
    if "start_positions" in rows[0]:
        batch["start_positions"] = torch.tensor([r["start_positions"] for r in rows])
        batch["end_positions"] = torch.tensor([r["end_positions"] for r in rows])
    if "slot_labels" in rows[0]:
        labels = torch.full_like(batch["input_ids"], -100)
        labels[:, 1:1 + max_answer_tokens] = torch.tensor([r["slot_labels"] for r in rows])
        batch["labels"] = labels
    if method == "seq2seq" and not left_pad and any(1 in r["token_type_ids"] for r in rows):
        # position t predicts token t+1: targets are the answer segment's tokens ([SEP] included)
        target = batch["token_type_ids"].bool() & batch["attention_mask"].bool()
        answer_targets = torch.full_like(batch["input_ids"], -100)
        answer_targets[:, :-1] = batch["input_ids"][:, 1:].masked_fill(~target[:, 1:], -100)
        batch["answer_targets"] = answer_targets
    return batch


# ---- models -------------------------------------------------------------------------------------


class SujiForSpanQA(SujiPreTrainedModel):
    """The extractive baseline (BERT on SQuAD): an encoder and a linear layer giving each token a
    start and an end logit; the loss is the mean of the two cross-entropies over the row's tokens
    ([CLS], position 0, is the target of windows that do not hold the answer)."""

    def __init__(self, config: SujiConfig):
        super().__init__(config)
        self.suji = SujiModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 2)  # named as the loader's fresh task heads
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                start_positions=None, end_positions=None, **kwargs):
        out = self.suji(input_ids, attention_mask, token_type_ids, position_ids)
        start, end = self.classifier(self.dropout(out.last_hidden_state)).float().unbind(-1)
        if attention_mask is not None:  # padding never starts or ends an answer
            start = start.masked_fill(attention_mask == 0, -1e4)
            end = end.masked_fill(attention_mask == 0, -1e4)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (F.cross_entropy(start, start_positions) + F.cross_entropy(end, end_positions)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end)


class SujiForUniLMAnswers(SujiForUniLM):
    """UniLM whose training forward projects onto the vocabulary only where an answer token is
    predicted (`answer_targets[b, t]`: the token that position t must predict, -100 elsewhere): the
    vocabulary projection of every passage position is most of a step's cost and none of its loss.
    Without `answer_targets` it is ``SujiForUniLM`` (generation, and checkpoints load in either)."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, logits_to_keep=0, answer_targets=None, **kwargs):
        # the parent's argument names are spelled out: generate() reads them off this signature
        # (e.g. it asks for the last position's logits only when `logits_to_keep` is there)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      position_ids=position_ids, inputs_embeds=inputs_embeds)
        if answer_targets is None:
            return super().forward(**inputs, logits_to_keep=logits_to_keep, **kwargs)
        predicting = answer_targets != -100
        out = super().forward(**inputs, logits_to_keep=predicting, **kwargs)
        out.loss = F.cross_entropy(out.logits.float(), answer_targets[predicting])
        return out


def model_class_for(method: str):
    """span: :class:`SujiForSpanQA`; seq2seq: :class:`SujiForUniLMAnswers`; mlm: ``SujiForMaskedLM``."""
    return {"span": SujiForSpanQA, "seq2seq": SujiForUniLMAnswers, "mlm": SujiForMaskedLM}[method]


# ---- prediction ---------------------------------------------------------------------------------


def _batches(rows, batch_size: int):
    from .batching import length_batches

    return length_batches([len(r["input_ids"]) for r in rows], batch_size)


def predict_span(forward, examples, windows, rows, pad_token_id: int, batch_size: int = 32,
                 max_answer_tokens: int = 64) -> list[str]:
    """Best span of every window (:func:`best_spans` over its passage tokens); per question the
    window with the best score answers (the rule of BERT's SQuAD windows)."""
    candidates = [[] for _ in examples]
    for index in _batches(rows, batch_size):
        chosen = [rows[i] for i in index]
        batch = collate_rows(chosen, "span", pad_token_id)
        out = forward(batch)
        positions = torch.arange(batch["input_ids"].shape[1])
        starts = torch.tensor([r["passage_start"] for r in chosen])
        lengths = torch.tensor([len(windows[r["window"]].ids) for r in chosen])
        allowed = (positions[None] >= starts[:, None]) & (positions[None] < (starts + lengths)[:, None])
        spans = best_spans(out.start_logits.cpu(), out.end_logits.cpu(), allowed, max_answer_tokens)
        for row, (first, last, score) in zip(chosen, spans):
            if first is not None:
                w = windows[row["window"]]
                s = row["passage_start"]
                candidates[w.example].append((window_answer_text(examples[w.example], w, first - s, last - s), score))
    return [vote_answers(c, "max")[0] for c in candidates]


def predict_mlm(forward, examples, windows, rows, tokenizer, max_answer_tokens: int, batch_size: int = 32,
                vote: str = "vote", always_answer: bool = False) -> list[str]:
    """All answer slots of every window in one forward pass, read by :func:`decode_mlm_slots`
    (passage constraint, [PAD] / [SEP] end the answer); the windows / passages of a question vote
    (:func:`vote_answers`, the post's sum(s^2) / (sum(s) + 1)). With `always_answer`, a question
    whose windows all say "no answer" takes the vote of their best non-empty answers."""
    A, empty = max_answer_tokens, [tokenizer.pad_token_id, tokenizer.sep_token_id]
    candidates = [[] for _ in examples]
    forced = [[] for _ in examples]
    for index in _batches(rows, batch_size):
        chosen = [rows[i] for i in index]
        batch = collate_rows(chosen, "mlm", tokenizer.pad_token_id)
        slots = torch.full_like(batch["input_ids"], -100)
        slots[:, 1:1 + A] = tokenizer.pad_token_id  # any label: it only selects the slots' logits
        out = forward({**batch, "labels": slots, "masked_logits_only": True})
        log_probs = out.logits.float().log_softmax(-1).view(len(chosen), A, -1).cpu()
        for row, slot_log_probs in zip(chosen, log_probs):
            w = windows[row["window"]]
            for allow_empty, found in ((True, candidates), (False, forced) if always_answer else (True, None)):
                if found is None:
                    continue
                answer, score = decode_mlm_slots(slot_log_probs, w.ids, empty, allow_empty)
                text = ""
                if answer:
                    at = find_tokens(w.ids, answer)
                    text = window_answer_text(examples[w.example], w, at, at + len(answer) - 1)
                found[w.example].append((text, score))
    answers = [vote_answers(c, vote)[0] for c in candidates]
    return [a or (vote_answers(f, vote)[0] if always_answer else "") for a, f in zip(answers, forced)]


def predict_seq2seq(model, examples, windows, rows, tokenizer, max_answer_tokens: int, batch_size: int = 32,
                    num_beams: int = 1, vote: str = "mean", use_cache: bool = True,
                    always_answer: bool = False) -> list[str]:
    """transformers' ``generate()`` on every window of a batch of questions (left-padded prompts
    ``[CLS] window [SEP] question [SEP]``), each next token constrained to keep the answer a piece
    of the window (:class:`~suji_models.generation.PassageSubstringLogitsProcessor`) and voted by the
    question's windows (:class:`~suji_models.generation.PassageVoteLogitsProcessor`). The answer
    tokens are then found in one of the question's windows and read from the passage's characters."""
    from ..generation import PassageSubstringLogitsProcessor, PassageVoteLogitsProcessor

    sep, pad = tokenizer.sep_token_id, tokenizer.pad_token_id
    device = next(model.parameters()).device
    by_example = defaultdict(list)
    for row in rows:
        by_example[windows[row["window"]].example].append(row)
    answers = [""] * len(examples)
    order = sorted(by_example, key=lambda e: max(len(r["input_ids"]) for r in by_example[e]))
    batch_examples, count = [], 0
    for position, e in enumerate(order):
        batch_examples.append(e)
        count += len(by_example[e])
        if count < batch_size and position + 1 < len(order):
            continue
        chosen = [r for b in batch_examples for r in by_example[b]]
        batch = collate_rows(chosen, "seq2seq", pad, left_pad=True)
        width = batch["input_ids"].shape[1]
        passages = [windows[r["window"]].ids for r in chosen]
        groups = [windows[r["window"]].example for r in chosen]
        processors = [PassageSubstringLogitsProcessor(passages, width, sep, num_beams),
                      PassageVoteLogitsProcessor(groups, width, sep, num_beams, how=vote, always_answer=always_answer)]
        out = model.generate(**{k: v.to(device) for k, v in batch.items()}, logits_processor=processors,
                             num_beams=num_beams, do_sample=False, max_new_tokens=max_answer_tokens + 1,
                             eos_token_id=sep, pad_token_id=pad, use_cache=use_cache)
        first_row = {}
        for n, g in enumerate(groups):
            first_row.setdefault(g, n)
        for g, n in first_row.items():
            tokens = out[n, width:].tolist()
            tokens = tokens[:tokens.index(sep)] if sep in tokens else tokens
            tokens = [t for t in tokens if t != pad]
            for r in by_example[g]:
                w = windows[r["window"]]
                at = find_tokens(w.ids, tokens) if tokens else -1
                if at >= 0:
                    answers[g] = window_answer_text(examples[g], w, at, at + len(tokens) - 1)
                    break
        batch_examples, count = [], 0
    return answers
