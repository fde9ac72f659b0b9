"""Summarization the SPACES way: extract the sentences that matter, then generate from them.

From "SPACES：“抽取-生成”式长文本摘要（法研杯总结）" (Su Jianlin, CAIL2020): a long document is cut
into sentences, an extractor picks the sentences a summary draws on, and a UniLM seq2seq model writes
the summary from those sentences only, with a copy mechanism and Sparse Softmax; the exposure-bias
counter-measure is from "Seq2Seq中Exposure Bias现象的浅析与对策".

- :func:`split_sentences`: Chinese sentences end at 。！？；… (and ! ? ;), a line break, with any
  closing quotes or brackets that follow kept on the sentence; over-long ones are cut again at ，：、.
- :func:`oracle_extract` (greedy) / :func:`exhaustive_oracle` (every subset, small documents): the
  source sentences whose concatenation maximises ROUGE (CAIL's 0.2 R1 + 0.4 R2 + 0.4 RL by default)
  against the reference summary: the extractor's training labels, as SPACES builds them.
- Readers (:func:`read_summaries`): inews JSONL content -> title, CSL TSV abstract -> title, LCSTS
  part III pseudo-XML (with its human_label), generic JSONL (source/summary fields). Errors name the
  file and line; empty sources or summaries are skipped and counted.
- Extractor: :func:`encode_sentences` (sentences into one token row, each token knowing its sentence),
  :func:`pool_sentences` (mean of the token states of each sentence), :class:`SujiForSentenceExtraction`.
- Generator: :func:`copy_bio_tags` (SPACES's copy labels: the longest common subsequence of source and
  target, a B where a matched run starts, I while it continues), :class:`SujiForSummarization` (UniLM
  + optional BIO copy head + optional Sparse Softmax loss), :func:`replace_target_tokens` (exposure bias).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast, ModelOutput

from ..losses import sparse_softmax_cross_entropy
from ..modeling import CACHE_OUTPUT_FIELD, SujiForUniLM, SujiModel, SujiPreTrainedModel, keep_last_logits
from .batching import length_batches, pad_rows
from .readers import DataError, iter_json_objects, json_field
from .text_metrics import cail_score

# ---- sentences -----------------------------------------------------------------------------------

_ENDS = "。！？；!?;…"
_CLOSERS = "”’」』）)》】\"'"
# a sentence: anything up to a run of end marks (an ellipsis …… is one run), then closing quotes;
# or up to a line break; or the rest of the text
_SENTENCE = re.compile(rf"[^{_ENDS}\n]*(?:[{_ENDS}]+[{_CLOSERS}]*|\n|$)")
_SOFT_BREAKS = "，：、,:"


def sentence_spans(text: str, max_length: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, whitespace around it excluded, empty ones dropped.
    With `max_length`, a longer sentence is cut again after ，：、 (pieces joined greedily up to
    `max_length`; a piece without such a mark stays whole)."""
    spans = []
    for match in _SENTENCE.finditer(text):
        start, end = match.span()
        if not text[start:end].strip():
            continue
        start, end = _strip(text, start, end)
        if max_length and end - start > max_length:
            spans.extend(_cut_long(text, start, end, max_length))
        else:
            spans.append((start, end))
    return spans


def _cut_long(text, start, end, max_length):
    cuts = [i + 1 for i in range(start, end - 1) if text[i] in _SOFT_BREAKS] + [end]
    pieces, piece_start, last = [], start, start
    for cut in cuts:
        if cut - piece_start > max_length and last > piece_start:
            pieces.append((piece_start, last))
            piece_start = last
        last = cut
    pieces.append((piece_start, end))
    return [_strip(text, s, e) for s, e in pieces if text[s:e].strip()]


def _strip(text, start, end):
    while text[start].isspace():
        start += 1
    while text[end - 1].isspace():
        end -= 1
    return start, end


def split_sentences(text: str, max_length: int | None = None) -> list[str]:
    """The sentences of `text` (see :func:`sentence_spans`)."""
    return [text[s:e] for s, e in sentence_spans(text, max_length)]


# ---- oracle extraction -----------------------------------------------------------------------------


def _score(sentences, chosen, summary, metric):
    return metric("".join(sentences[i] for i in sorted(chosen)), summary)


def oracle_extract(sentences, summary: str, max_sentences: int | None = None, metric=cail_score) -> list[int]:
    """Greedy oracle: add, one at a time, the sentence that raises `metric(selection, summary)` the
    most (the selection joined in document order); stop when no sentence raises it or after
    `max_sentences`. Returns the chosen indices, sorted. Ties go to the earlier sentence."""
    chosen: list[int] = []
    best = 0.0
    limit = len(sentences) if max_sentences is None else min(max_sentences, len(sentences))
    while len(chosen) < limit:
        candidates = [(_score(sentences, chosen + [i], summary, metric), -i) for i in range(len(sentences))
                      if i not in chosen]
        score, negative_index = max(candidates)
        if score <= best:
            break
        best = score
        chosen.append(-negative_index)
    return sorted(chosen)


def exhaustive_oracle(sentences, summary: str, max_sentences: int | None = None, metric=cail_score,
                      limit: int = 14) -> list[int]:
    """The best subset by trying them all (2^n): the exact oracle for short documents (n <= `limit`).
    Ties go to the smaller subset, then the lexicographically first one."""
    n = len(sentences)
    if n > limit:
        raise ValueError(f"{n} sentences: too many to try every subset (limit {limit}); use oracle_extract")
    best, best_subset = 0.0, ()
    for size in range(1, (n if max_sentences is None else min(max_sentences, n)) + 1):
        for subset in itertools.combinations(range(n), size):
            score = _score(sentences, subset, summary, metric)
            if score > best:
                best, best_subset = score, subset
    return list(best_subset)


# ---- readers ---------------------------------------------------------------------------------------

FORMATS = ("inews", "csl", "lcsts", "jsonl")


@dataclass
class SummaryExample:
    id: str
    source: str
    summary: str = ""
    human_label: int | None = None  # LCSTS part III: 1-5 relevance of summary to text
    sentences: list | None = field(default=None, repr=False)  # set by prepare_extraction
    oracle: list | None = field(default=None, repr=False)  # oracle sentence indices (prepare_extraction)


@dataclass
class SummaryData:
    examples: list[SummaryExample]
    skipped: Counter = field(default_factory=Counter)  # reason -> count (empty source / summary)

    def report(self) -> str:
        return ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none skipped"


def _keep(data: SummaryData, example: SummaryExample, need_summary: bool) -> None:
    if not example.source.strip():
        data.skipped["empty source"] += 1
    elif need_summary and not example.summary.strip():
        data.skipped["empty summary"] += 1
    else:
        data.examples.append(example)


def read_summaries(path, fmt: str, source_field: str = "source", summary_field: str = "summary",
                   need_summary: bool = True) -> SummaryData:
    """Pairs from `path` in one of :data:`FORMATS`:
    - inews: JSONL ``{title, content, label}``; content -> title, id = line number.
    - csl: ``prefix<TAB>abstract<TAB>title`` per line; abstract -> title, id = line number.
    - lcsts: ``<doc id=N><human_label>..</human_label><summary>..</summary><short_text>..</short_text></doc>``.
    - jsonl: JSON objects with `source_field` (and `summary_field` when `need_summary`), optional ``id``.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown summarization format {fmt!r}; expected one of {FORMATS}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data = SummaryData([])
    if fmt == "csl":
        for lineno, line in enumerate(path.open(encoding="utf-8"), 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3:
                raise DataError(f"{path}:{lineno}: expected 'prefix<TAB>abstract<TAB>title', got {len(parts)} fields")
            _keep(data, SummaryExample(str(lineno), parts[1], parts[2]), need_summary)
    elif fmt == "lcsts":
        _read_lcsts(path, data, need_summary)
    else:
        source_field, summary_field = ("content", "title") if fmt == "inews" else (source_field, summary_field)
        for lineno, obj in iter_json_objects(path, with_lines=True):
            where = f"{path}:{lineno}"
            source = json_field(obj, source_field, where, str)
            summary = json_field(obj, summary_field, where, str) if need_summary or summary_field in obj else ""
            _keep(data, SummaryExample(str(obj.get("id", lineno)), source, summary), need_summary)
    return data


_LCSTS_DOC = re.compile(r"<doc id=(\d+)>(.*?)</doc>", re.S)


def _lcsts_field(body: str, name: str, where: str) -> str:
    match = re.search(rf"<{name}>(.*?)</{name}>", body, re.S)
    if match is None:
        raise DataError(f"{where}: missing field <{name}>")
    return match.group(1).strip()


def _read_lcsts(path, data, need_summary):
    text = path.read_text(encoding="utf-8")
    covered = 0
    for match in _LCSTS_DOC.finditer(text):
        where = f"{path}:{text.count(chr(10), 0, match.start()) + 1}"
        if text[covered:match.start()].strip():
            raise DataError(f"{path}:{text.count(chr(10), 0, covered) + 1}: text outside <doc>...</doc>")
        covered = match.end()
        body = match.group(2)
        label = _lcsts_field(body, "human_label", where) if "<human_label>" in body else None
        if label is not None and not label.isdigit():
            raise DataError(f"{where}: field <human_label> must be an integer, got {label!r}")
        _keep(data, SummaryExample(match.group(1), _lcsts_field(body, "short_text", where),
                                   _lcsts_field(body, "summary", where), int(label) if label else None),
              need_summary)
    if text[covered:].strip():
        raise DataError(f"{path}:{text.count(chr(10), 0, covered) + 1}: text outside <doc>...</doc> (unclosed doc?)")


# ---- extractor -------------------------------------------------------------------------------------


@dataclass
class EncodedSentences:
    input_ids: list[int]
    sentence_index: list[int]  # per token: the sentence it belongs to, -1 for [CLS]/[SEP]
    kept: int  # sentences that fit (the rest were cut off by max_length)


def encode_sentences(sentences, tokenizer, max_length: int) -> EncodedSentences:
    """[CLS] s0 s1 ... [SEP] as one row; each token remembers its sentence. Sentences that do not fit
    in `max_length` are cut off (and counted by `kept`); a sentence cut in the middle is kept partly."""
    ids, index = [tokenizer.cls_token_id], [-1]
    kept = 0
    for i, sentence in enumerate(sentences):
        room = max_length - 1 - len(ids)
        if room <= 0:
            break
        pieces = tokenizer(sentence, add_special_tokens=False)["input_ids"][:room]
        if not pieces:
            pieces = [tokenizer.unk_token_id]
        ids += pieces
        index += [i] * len(pieces)
        kept += 1
    ids.append(tokenizer.sep_token_id)
    index.append(-1)
    return EncodedSentences(ids, index, kept)


def pool_sentences(hidden: torch.Tensor, sentence_index: torch.Tensor, num_sentences: int) -> torch.Tensor:
    """Mean of the token states of each sentence: hidden [B, L, H], sentence_index [B, L] (-1 = none)
    -> [B, num_sentences, H] (zeros for sentences a row does not have)."""
    batch, _, size = hidden.shape
    valid = sentence_index >= 0
    slot = torch.where(valid, sentence_index, num_sentences)  # an extra bin collects the non-sentence tokens
    sums = hidden.new_zeros(batch, num_sentences + 1, size).scatter_add_(
        1, slot[..., None].expand(-1, -1, size), hidden * valid[..., None].to(hidden.dtype))
    counts = torch.zeros(batch, num_sentences + 1, dtype=hidden.dtype, device=hidden.device).scatter_add_(
        1, slot, valid.to(hidden.dtype))
    return (sums / counts.clamp(min=1)[..., None])[:, :num_sentences]


@dataclass
class ExtractionOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # [B, S] one score per sentence (sigmoid > threshold: keep it)


class SentenceScorer(nn.Module):
    """Sentence vectors [B, S, H] -> one logit each [B, S]: each sentence also sees its two neighbours
    (a width-3 convolution over the sentence sequence written as one Linear over [previous, self, next],
    so the model's own initializer covers it; the post runs a DGCNN there), residually, then a
    linear score."""

    def __init__(self, size: int):
        super().__init__()
        self.context = nn.Linear(3 * size, size)
        self.score = nn.Linear(size, 1)

    def forward(self, vectors):
        previous = F.pad(vectors, (0, 0, 1, 0))[:, :-1]
        following = F.pad(vectors, (0, 0, 0, 1))[:, 1:]
        vectors = vectors + torch.relu(self.context(torch.cat([previous, vectors, following], dim=-1)))
        return self.score(vectors).squeeze(-1)


class SujiForSentenceExtraction(SujiPreTrainedModel):
    """SPACES's extractor: sentence vectors (mean of their token states in a bidirectional encoder)
    -> a small layer over the sentence sequence -> one logit per sentence; binary cross entropy
    against the oracle labels (label -100: not scored, e.g. padding sentences). The post uses a
    DGCNN over the sentence vectors; here :class:`SentenceScorer`'s convolution plays that part."""

    def __init__(self, config):
        super().__init__(config)
        self.suji = SujiModel(config, add_pooling_layer=False)
        self.classifier = SentenceScorer(config.hidden_size)  # the name loading reports as a new head
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, sentence_index=None, sentence_labels=None, **kwargs):
        hidden = self.suji(input_ids, attention_mask, mask_kind="bidirectional").last_hidden_state
        num_sentences = sentence_labels.shape[1] if sentence_labels is not None else int(sentence_index.max()) + 1
        logits = self.classifier(pool_sentences(hidden, sentence_index, max(num_sentences, 1)))
        loss = None
        if sentence_labels is not None:
            scored = sentence_labels != -100
            loss = F.binary_cross_entropy_with_logits(logits[scored].float(), sentence_labels[scored].float())
        return ExtractionOutput(loss=loss, logits=logits)


def pick_sentences(probabilities, count: int, threshold: float = 0.2) -> list[int]:
    """Indices of the first `count` sentences whose probability passes `threshold` (SPACES keeps
    low-threshold sentences: recall matters more than precision for the generator), at least the most
    probable one."""
    probabilities = list(probabilities)[:count]
    chosen = [i for i, p in enumerate(probabilities) if p > threshold]
    if not chosen and probabilities:
        chosen = [max(range(len(probabilities)), key=lambda i: probabilities[i])]
    return chosen


# ---- generator: copy tags, the model, exposure bias -------------------------------------------------

COPY_TAGS = ("O", "B", "I")
TAG_O, TAG_B, TAG_I = 0, 1, 2


def lcs_alignment(a, b) -> list[tuple[int, int]]:
    """(i, j) pairs of one longest common subsequence of `a` and `b` (a[i] == b[j], both increasing)."""
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if a[i] == b[j] else max(table[i + 1][j], table[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] == b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def copy_bio_tags(source, target) -> list[int]:
    """SPACES's copy labels of the target tokens: align source and target by their longest common
    subsequence; a target token aligned right after the previous aligned pair (next source token,
    next target token) continues a copied span (I), another aligned token starts one (B), the rest
    is generated (O). Every B/I run is then a contiguous n-gram of the source."""
    tags = [TAG_O] * len(target)
    previous = (-2, -2)
    for i, j in lcs_alignment(list(source), list(target)):
        tags[j] = TAG_I if (i, j) == (previous[0] + 1, previous[1] + 1) else TAG_B
        previous = (i, j)
    return tags


def replace_target_tokens(input_ids, token_type_ids, attention_mask, probability: float, low: int, high: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Exposure-bias counter-measure ("Seq2Seq中Exposure Bias现象的浅析与对策"): during training, each
    target-segment input token is replaced with probability `probability` by a random token in
    [low, high), so the decoder learns to continue from imperfect prefixes as at inference. Only the
    inputs change; the labels stay the original tokens (compute them before calling this)."""
    target = token_type_ids.bool() & attention_mask.bool()
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < probability
    random_ids = torch.randint(low, high, input_ids.shape, generator=generator, device=input_ids.device)
    return torch.where(target & draw, random_ids, input_ids)


@dataclass
class SummarizationOutput(CausalLMOutputWithPast):
    copy_logits: torch.Tensor | None = None  # [B, L, 3] O/B/I of the token each position predicts


class SujiForSummarization(SujiForUniLM):
    """UniLM with SPACES's two additions, each a config switch:
    - ``copy_head`` (bool): a linear layer predicts, for the next token, O / B / I (see
      :func:`copy_bio_tags`); its cross entropy (``copy_loss_weight``) is added to the LM loss. At
      generation the last position's tag logits are kept in ``last_copy_logits`` for
      :class:`suji_models.generation.CopySpanLogitsProcessor`.
    - ``sparse_softmax_k`` (int, 0 = off): the LM loss is Sparse Softmax over the top k logits.
    `copy_labels` [B, L] are aligned with `labels`: position t holds the tag of token t (-100: none)."""

    def __init__(self, config):
        super().__init__(config)
        # named `classifier` so that loading an encoder checkpoint reports it as a new task head
        self.classifier = nn.Linear(config.hidden_size, len(COPY_TAGS)) if getattr(config, "copy_head", False) else None
        self.last_copy_logits = None
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, cache=None, use_cache=None, labels=None, copy_labels=None,
                output_hidden_states=None, return_dict=None, logits_to_keep=0, past_key_values=None,
                cache_position=None, **kwargs):
        # the parent's signature spelled out: generate() inspects it (cache and position arguments)
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              position_ids=position_ids, inputs_embeds=inputs_embeds, cache=cache,
                              use_cache=use_cache, logits_to_keep=logits_to_keep,
                              output_hidden_states=bool(output_hidden_states) or self.classifier is not None,
                              past_key_values=past_key_values, cache_position=cache_position, **kwargs)
        logits, copy_logits = out.logits, None
        if self.classifier is not None:
            copy_logits = self.classifier(keep_last_logits(out.hidden_states[-1], logits_to_keep))
            self.last_copy_logits = copy_logits[:, -1].detach()
        loss = None
        if labels is not None:  # position t predicts token t+1
            flat_logits, flat_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            k = int(getattr(self.config, "sparse_softmax_k", 0) or 0)
            loss = (sparse_softmax_cross_entropy(flat_logits, flat_labels, k) if k else
                    F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=-100))
            if copy_logits is not None and copy_labels is not None:
                copy_loss = F.cross_entropy(copy_logits[:, :-1].reshape(-1, len(COPY_TAGS)).float(),
                                            copy_labels[:, 1:].reshape(-1), ignore_index=-100)
                loss = loss + float(getattr(self.config, "copy_loss_weight", 1.0)) * copy_loss
        return SummarizationOutput(loss=loss, logits=logits, copy_logits=copy_logits, hidden_states=out.hidden_states,
                                   **{CACHE_OUTPUT_FIELD: getattr(out, CACHE_OUTPUT_FIELD)})


# ---- rows, batches, decoding (what the recipe wires onto the driver) ----------------------------------


def prepare_extraction(example: SummaryExample, max_sentence_chars: int = 128, max_chars: int | None = None):
    """Sentences of the source (``example.sentences``) and, when there is a summary, the greedy oracle
    over the first `max_chars` characters' sentences (``example.oracle``): the extractor's labels.
    Cached on the example."""
    if getattr(example, "sentences", None) is None:
        example.sentences = split_sentences(example.source, max_sentence_chars)
    if getattr(example, "oracle", None) is None and example.summary:
        window, used = [], 0
        for sentence in example.sentences:
            if max_chars is not None and used >= max_chars:
                break
            window.append(sentence)
            used += len(sentence)
        example.oracle = oracle_extract(window, example.summary)
    return example


def extraction_row(tokenizer, sentences, oracle, max_length: int) -> dict:
    """Training / prediction row of the extractor: token ids, each token's sentence, and one label per
    kept sentence (1 = in the oracle; None when `oracle` is None)."""
    encoded = encode_sentences(sentences, tokenizer, max_length)
    row = {"input_ids": encoded.input_ids, "sentence_index": encoded.sentence_index, "kept": encoded.kept}
    if oracle is not None:
        chosen = set(oracle)
        row["sentence_labels"] = [int(i in chosen) for i in range(encoded.kept)]
    return row


def collate_extraction(rows, pad_id: int) -> dict:
    batch = pad_rows(rows, {"input_ids": pad_id, "sentence_index": -1})
    if "sentence_labels" in rows[0]:
        width = max(1, max(len(r["sentence_labels"]) for r in rows))
        batch["sentence_labels"] = torch.tensor([r["sentence_labels"] + [-100] * (width - len(r["sentence_labels"]))
                                                 for r in rows])
    return batch


def source_ids(tokenizer, source: str, max_tokens: int) -> list[int]:
    """The source's content token ids, truncated to `max_tokens` (the generator's and the copy
    processor's view of the source)."""
    return tokenizer(source, add_special_tokens=False)["input_ids"][:max_tokens]


def seq2seq_row(tokenizer, source: str, target: str, max_source_tokens: int, max_target_tokens: int,
                copy: bool = False) -> dict:
    """UniLM row ``[CLS] source [SEP] target [SEP]`` (token types 0 then 1); with `copy`, the copy tag
    of each target token (``copy_labels``, -100 on the source; the closing [SEP] is O)."""
    src = source_ids(tokenizer, source, max_source_tokens)
    tgt = tokenizer(target, add_special_tokens=False)["input_ids"][:max_target_tokens]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    row = {"input_ids": [cls] + src + [sep] + tgt + [sep],
           "token_type_ids": [0] * (len(src) + 2) + [1] * (len(tgt) + 1)}
    if copy:
        row["copy_labels"] = [-100] * (len(src) + 2) + copy_bio_tags(src, tgt) + [TAG_O]
    return row


def collate_seq2seq(rows, pad_id: int, exposure_bias_prob: float = 0.0, random_low: int = 0,
                    random_high: int = 0, generator=None) -> dict:
    """A training batch: labels on the target tokens; with `exposure_bias_prob`, target inputs randomly
    replaced (labels keep the true tokens)."""
    batch = pad_rows(rows, {"input_ids": pad_id, "token_type_ids": 0, "copy_labels": -100})
    batch["labels"] = SujiForUniLM.unilm_labels(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    if exposure_bias_prob > 0:
        batch["input_ids"] = replace_target_tokens(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                                   exposure_bias_prob, random_low, random_high, generator)
    return batch


_SPACE_NEAR_CJK = re.compile(r"(?<=[^\x00-\x7f]) | (?=[^\x00-\x7f])")


def decode_summary(tokenizer, ids) -> str:
    """Generated ids -> text: special tokens dropped, WordPiece joined, the spaces a char tokenizer puts
    between Chinese characters removed (those between ASCII words kept)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    return _SPACE_NEAR_CJK.sub("", text).strip()


@torch.no_grad()
def generate_summaries(model, tokenizer, sources, *, max_source_tokens: int, max_new_tokens: int = 32,
                       num_beams: int = 3, batch_size: int = 16, no_repeat_ngram_size: int = 0,
                       copy: bool = False, sparse_softmax_k: int = 0) -> list[str]:
    """Beam search through ``generate()`` for each source text, batched by length (left padding), with
    target-only n-gram blocking, the copy-span constraint (the model's copy head must be on) and
    Sparse Softmax decoding as switches. Returns one summary per source, in order."""
    from ..generation import CopySpanLogitsProcessor, SparseSoftmaxLogitsProcessor, TargetNoRepeatNGramLogitsProcessor
    model.eval()
    device = next(model.parameters()).device
    encoded = [source_ids(tokenizer, s, max_source_tokens) for s in sources]
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    out: list[str] = [""] * len(sources)
    for index in length_batches([len(e) for e in encoded], batch_size):
        prompts = [[cls] + encoded[i] + [sep] for i in index]
        width = max(map(len, prompts))
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        # Order matters: hard constraints first (blocked n-grams, then the copy span among what is left),
        # Sparse Softmax's top-k renormalization last, over the tokens the constraints allow. Top-k first
        # would often leave a copied span no allowed continuation.
        processors = []
        if no_repeat_ngram_size:
            processors.append(TargetNoRepeatNGramLogitsProcessor(no_repeat_ngram_size, width))
        if copy:
            if getattr(model, "classifier", None) is None:
                raise ValueError("copy decoding needs a model trained with the copy head (config.copy_head)")
            processors.append(CopySpanLogitsProcessor([encoded[i] for i in index], width,
                                                      lambda: model.last_copy_logits, num_beams, sep))
        if sparse_softmax_k:
            processors.append(SparseSoftmaxLogitsProcessor(sparse_softmax_k))
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                   num_beams=num_beams, do_sample=False, eos_token_id=sep, pad_token_id=pad,
                                   logits_processor=processors)
        for row, i in enumerate(index):
            out[i] = decode_summary(tokenizer, [t for t in generated[row, width:].tolist() if t not in (sep, pad)])
    return out


@torch.no_grad()
def extract_summaries(model, tokenizer, sentence_lists, *, max_length: int, threshold: float = 0.2,
                      batch_size: int = 16, forward=None) -> list[list[int]]:
    """The extractor's picks (sentence indices, in order) for each list of sentences."""
    model.eval()
    forward = forward or (lambda batch: model(**batch))
    rows = [extraction_row(tokenizer, sentences, None, max_length) for sentences in sentence_lists]
    picks: list[list[int]] = [[] for _ in rows]
    for index in length_batches([len(r["input_ids"]) for r in rows], batch_size):
        batch = collate_extraction([rows[i] for i in index], tokenizer.pad_token_id)
        logits = forward(batch).logits
        probabilities = torch.sigmoid(logits.float()).cpu()
        for row, i in enumerate(index):
            picks[i] = pick_sentences(probabilities[row].tolist(), rows[i]["kept"], threshold)
    return picks


__all__ = [
    "split_sentences", "sentence_spans", "oracle_extract", "exhaustive_oracle", "FORMATS", "SummaryExample",
    "SummaryData", "read_summaries", "EncodedSentences", "encode_sentences", "pool_sentences",
    "SujiForSentenceExtraction", "pick_sentences", "COPY_TAGS", "copy_bio_tags", "lcs_alignment",
    "replace_target_tokens", "SujiForSummarization", "SummarizationOutput", "ExtractionOutput", "SentenceScorer",
    "prepare_extraction", "extraction_row", "collate_extraction", "source_ids", "seq2seq_row", "collate_seq2seq",
    "decode_summary", "generate_summaries", "extract_summaries",
]
