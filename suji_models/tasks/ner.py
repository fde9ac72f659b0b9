"""Named entity recognition: readers, span <-> token mapping, the model, decoding and the metric.

One span format everywhere: an entity is ``(start, end, type)`` over the *characters* of the text,
``end`` exclusive (``text[start:end]`` is the entity); entities may nest or overlap.

- Readers: :func:`read_tagged` (one ``char tag`` per line, blank line between sentences; BIO as
  People's Daily / Weibo, BMES = BIOES as MSRA / Resume; Weibo's ``char+position`` token field is
  detected and stripped), :func:`read_cluener` (CLUENER's concatenated JSON objects, inclusive
  ends), :func:`read_ner` (by format name). Tag sequences become spans by the rules of
  ``seqeval``'s default mode (conlleval), so the metric here equals seqeval's on BIO data.
- Tokens: :func:`encode_examples` tokenizes with offsets and maps each character span to a token
  span; spans that do not start and end on token boundaries (a WordPiece or an [UNK] covering
  several characters) and spans cut off by truncation are counted in an :class:`AlignmentReport`,
  never silently dropped. Predictions map back through the same offsets.
- Model: :class:`SujiForNer`, a Suji encoder with a GlobalPointer, Efficient GlobalPointer or
  CRF head (``config.ner_head``), saved and loaded with ``save_pretrained`` / ``from_pretrained``.
- Metric: :func:`entity_scores`, entity-level micro precision / recall / F1 on exact
  (start, end, type), with per-type figures.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..configuration import SujiConfig
from ..convert.loading import checkpoint_config
from ..layers import CRF, EfficientGlobalPointer, GlobalPointer, decode_spans
from ..losses import sparse_multilabel_categorical_crossentropy
from ..modeling import SujiModel, SujiPreTrainedModel
from .batching import length_batches, pad_rows
from .metrics import scores_from_counts, set_counts
from .offsets import EncodedText, char_to_token_maps, token_span_to_chars
from .output import write_jsonl
from .readers import DataError, iter_json_objects, json_field, read_texts, split_examples
from .windows import Windows, encode_windows

FORMATS = ("bio", "bmes", "cluener")
HEADS = ("global_pointer", "efficient_global_pointer", "crf")

Span = tuple[int, int, str]


@dataclass
class NerExample:
    text: str
    entities: list[Span] = field(default_factory=list)  # (start, end exclusive, type), sorted, unique


# ---- tag sequences <-> spans ---------------------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''). BMES's M is BIOES's I."""
    if tag == "O" or not tag:
        return "O", ""
    prefix, _, kind = tag.partition("-")
    if not kind:
        raise ValueError(f"tag {tag!r} is neither 'O' nor PREFIX-TYPE")
    prefix = prefix.upper()
    prefix = "I" if prefix == "M" else prefix
    if prefix not in ("B", "I", "E", "S"):
        raise ValueError(f"tag {tag!r}: prefix must be one of B, I, M, E, S")
    return prefix, kind


def _chunk_ends(prev_prefix, prefix, prev_kind, kind) -> bool:
    return (prev_prefix in ("E", "S")
            or (prev_prefix in ("B", "I") and prefix in ("B", "S", "O"))
            or (prev_prefix != "O" and prev_kind != kind))


def _chunk_starts(prev_prefix, prefix, prev_kind, kind) -> bool:
    return (prefix in ("B", "S")
            or (prev_prefix in ("E", "S", "O") and prefix in ("I", "E"))
            or (prefix != "O" and prev_kind != kind))


def tags_to_spans(tags) -> list[tuple[int, int, str]]:
    """Entities of a BIO / BIOES / BMES tag sequence as (start, end exclusive, type) over positions.

    The chunking rules are conlleval's, as ``seqeval`` applies them by default: an I- (or E-) after
    O or after another type starts an entity, a type change ends one."""
    spans, start, prev_prefix, prev_kind = [], None, "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = _split_tag(tag)
        if start is not None and _chunk_ends(prev_prefix, prefix, prev_kind, kind):
            spans.append((start, i, prev_kind))
            start = None
        if _chunk_starts(prev_prefix, prefix, prev_kind, kind):
            start = i
        prev_prefix, prev_kind = prefix, kind
    return spans


def spans_to_bio(length: int, spans) -> tuple[list[str], list]:
    """BIO tags for `length` positions from (start, end exclusive, type) spans. Overlapping spans
    cannot be tagged: the earlier (then longer) one wins and the others are returned as dropped."""
    tags, dropped = ["O"] * length, []
    for start, end, kind in sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]), s[2])):
        if any(t != "O" for t in tags[start:end]):
            dropped.append((start, end, kind))
            continue
        tags[start] = f"B-{kind}"
        for i in range(start + 1, end):
            tags[i] = f"I-{kind}"
    return tags, dropped


# ---- readers ---------------------------------------------------------------------------------


# Weibo NER: the character, then its position inside the word (科0, 技1; e12 in a long English word)
_POSITION_SUFFIX = re.compile(r"^(.+?)(\d+)$")


def read_tagged(path, scheme: str = "bio", strip_position_digit: bool | None = None) -> list[NerExample]:
    """A ``token tag`` per line (space or tab), a blank line between sentences; CRLF is fine.

    `scheme` ("bio" or "bmes") is checked against the tags seen. Weibo NER writes each character
    followed by its position in the word (``科0``); `strip_position_digit=None` detects that (every
    token field ends in a number: ``科0``, ``e12``) and strips the number."""
    if scheme not in ("bio", "bmes"):
        raise ValueError(f"scheme must be 'bio' or 'bmes', got {scheme!r}")
    path = Path(path)
    sentences, tokens, tags = [], [], []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if tokens:
                    sentences.append((tokens, tags, lineno))
                    tokens, tags = [], []
                continue
            parts = line.split("\t") if "\t" in line else line.rsplit(" ", 1)
            if len(parts) != 2 or not parts[0] or not parts[1].strip():
                raise ValueError(f"{path}:{lineno}: expected 'token tag', got {line!r}")
            tokens.append(parts[0])
            tags.append(parts[1].strip())
    if tokens:
        sentences.append((tokens, tags, lineno))
    if strip_position_digit is None:
        strip_position_digit = bool(sentences) and all(
            _POSITION_SUFFIX.match(t) for toks, _, _ in sentences for t in toks)
    allowed = {"B", "I", "O"} if scheme == "bio" else {"B", "M", "E", "S", "O", "I"}
    examples = []
    for toks, tags, lineno in sentences:
        if strip_position_digit:
            toks = [_POSITION_SUFFIX.match(t).group(1) for t in toks]
        bad = sorted({t for t in tags if (t.split("-", 1)[0].upper() if t != "O" else "O") not in allowed})
        if bad:
            raise ValueError(f"{path}: sentence ending at line {lineno}: tags {bad} are not {scheme.upper()}")
        starts = [0]
        for t in toks:
            starts.append(starts[-1] + len(t))
        entities = sorted({(starts[s], starts[e], kind) for s, e, kind in tags_to_spans(tags)})
        examples.append(NerExample("".join(toks), entities))
    return examples


def read_cluener(path) -> list[NerExample]:
    """CLUENER: ``{"text", "label": {type: {entity: [[start, end_inclusive], ...]}}}`` objects. A
    recorded span whose characters differ from its entity string is an error."""
    examples = []
    for line, obj in iter_json_objects(path, with_lines=True):
        text, entities = json_field(obj, "text", f"{path}:{line}", str), set()
        for kind, found in (obj.get("label") or {}).items():
            for surface, positions in found.items():
                for start, end in positions:
                    if text[start:end + 1] != surface:
                        raise DataError(f"{path}:{line}: label {kind!r}: span [{start}, {end}] is {text[start:end + 1]!r}, "
                                         f"not {surface!r}")
                    entities.add((start, end + 1, kind))
        examples.append(NerExample(text, sorted(entities)))
    return examples


def read_ner(path, format: str) -> list[NerExample]:
    """Read `path` in one of FORMATS: bio | bmes | cluener."""
    if format == "cluener":
        return read_cluener(path)
    if format in ("bio", "bmes"):
        return read_tagged(path, format)
    raise ValueError(f"unknown NER format {format!r}; expected one of {FORMATS}")


def entity_types(*example_lists) -> list[str]:
    return sorted({kind for examples in example_lists for ex in examples for _, _, kind in ex.entities})


# ---- tokens ----------------------------------------------------------------------------------


@dataclass
class EncodedExample(EncodedText):
    token_spans: list[tuple[int, int, int]] = field(default_factory=list)  # (first token, last inclusive, type id)

    def as_row(self) -> dict:
        return {"input_ids": self.input_ids, "label_mask": self.label_mask, "token_spans": self.token_spans}


@dataclass
class AlignmentReport:
    examples: int = 0
    spans: int = 0
    aligned: int = 0
    unaligned: list = field(default_factory=list)  # (example index, span, text of the span)
    truncated: list = field(default_factory=list)  # spans past the kept tokens
    unknown_type: list = field(default_factory=list)  # types the label set lacks
    truncated_examples: int = 0

    def as_dict(self) -> dict:
        return {"sentences": self.examples, "entities": self.spans, "aligned": self.aligned,
                "unaligned": len(self.unaligned), "truncated": len(self.truncated),
                "unknown_type": len(self.unknown_type), "truncated_sentences": self.truncated_examples}

    def summary(self) -> str:
        text = (f"{self.examples} sentences, {self.spans} entities: {self.aligned} on token boundaries, "
                f"{len(self.unaligned)} not aligned to tokens, {len(self.truncated)} cut off by truncation "
                f"({self.truncated_examples} sentences truncated)")
        if self.unknown_type:
            text += f", {len(self.unknown_type)} of types outside the label set"
        if self.unaligned:
            text += "; e.g. " + ", ".join(repr(s[2]) for s in self.unaligned[:5])
        return text


def encode_examples(tokenizer, examples, types, max_length: int, report: AlignmentReport | None = None):
    """Tokenize with character offsets (special tokens added, truncated to `max_length`) and map
    each entity to a token span. Returns (encoded examples, AlignmentReport)."""
    report = report or AlignmentReport()
    type_id = {t: i for i, t in enumerate(types)}
    encoded = []
    texts = [ex.text for ex in examples]
    batch = tokenizer(texts, return_offsets_mapping=True, truncation=True, max_length=max_length,
                      return_special_tokens_mask=True) if texts else {"input_ids": []}
    full_lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    for n, ex in enumerate(examples):
        ids, offsets = batch["input_ids"][n], [tuple(o) for o in batch["offset_mapping"][n]]
        special = batch["special_tokens_mask"][n]
        label_mask = [0 if s else 1 for s in special]
        kept_end = max((e for (s, e), sp in zip(offsets, special) if not sp), default=0)
        if full_lengths[n] > sum(label_mask):
            report.truncated_examples += 1
        starts, ends = char_to_token_maps([o if not sp else (0, 0) for o, sp in zip(offsets, special)])
        spans = []
        for span in ex.entities:
            start, end, kind = span
            report.spans += 1
            if kind not in type_id:
                report.unknown_type.append((n, span))
                continue
            if end > kept_end:
                report.truncated.append((n, span))
                continue
            if start not in starts or end not in ends or starts[start] > ends[end]:
                report.unaligned.append((n, span, ex.text[start:end]))
                continue
            report.aligned += 1
            spans.append((starts[start], ends[end], type_id[kind]))
        report.examples += 1
        encoded.append(EncodedExample(list(ids), offsets, label_mask, sorted(set(spans))))
    return encoded, report


# ---- batches -----------------------------------------------------------------------------------


def collate(rows, pad_token_id: int, head: str, num_types: int) -> dict:
    """Pad a list of `EncodedExample.as_row()` dicts into a batch for :class:`SujiForNer`.

    GlobalPointer heads get `labels` [B, num_types, K]: the positive spans of each type as flat
    indices start * L + end, padded with -1 (the sparse ZLPR input). The CRF head gets BIO tag ids
    [B, L] (-100 on special tokens and padding; overlapping spans keep the first, see spans_to_bio)."""
    out = pad_rows(rows, {"input_ids": pad_token_id, "label_mask": 0})
    batch, length = out["input_ids"].shape
    label_mask = out["label_mask"]
    if head == "crf":
        labels = torch.full((batch, length), -100, dtype=torch.long)
        for b, r in enumerate(rows):
            tags, _ = spans_to_bio(len(r["input_ids"]), [(s, e + 1, t) for s, e, t in r["token_spans"]])
            ids = [0 if tag == "O" else 1 + 2 * int(tag[2:]) + (tag[0] == "I") for tag in tags]
            labels[b, : len(ids)] = torch.tensor(ids)
        out["labels"] = labels.masked_fill(label_mask == 0, -100)
    else:
        most = max([1] + [Counter(t for _, _, t in r["token_spans"]).most_common(1)[0][1]
                          for r in rows if r.get("token_spans")])
        labels = torch.full((batch, num_types, most), -1, dtype=torch.long)
        fill = Counter()
        for b, r in enumerate(rows):
            for s, e, t in r.get("token_spans", ()):
                labels[b, t, fill[b, t]] = s * length + e
                fill[b, t] += 1
        out["labels"] = labels
    return out


def crf_tag_names(types) -> list[str]:
    """Tag id -> name for the CRF head: O, then B-/I- of each type in order."""
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


# ---- the model -----------------------------------------------------------------------------------


@dataclass
class NerOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # span scores [B, T, L, L] or CRF emissions [B, L, tags]


class CrfTagger(nn.Module):
    """Per-token tag scores (a linear layer) and the CRF over them."""

    def __init__(self, hidden_size: int, num_tags: int, lr_multiplier: float):
        super().__init__()
        self.emissions = nn.Linear(hidden_size, num_tags)
        self.crf = CRF(num_tags, lr_multiplier)

    def forward(self, hidden):
        return self.emissions(hidden)


def left_align(x: torch.Tensor, mask: torch.Tensor):
    """Move the positions where `mask` is set to the front of each row, keeping their order:
    (x gathered [B, L, ...], aligned mask, source positions [B, L])."""
    order = torch.sort((~mask.bool()).to(torch.uint8), dim=1, stable=True).indices
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index), mask.bool().gather(1, order), order


class SujiForNer(SujiPreTrainedModel):
    """A Suji encoder with an NER head. The head's settings live in the config:
    ``ner_head`` (global_pointer | efficient_global_pointer | crf), ``ner_types`` (entity type
    names, in label-id order), ``ner_head_size`` (GlobalPointer q/k size, 64), ``crf_lr_multiplier``.

    ``forward(input_ids, attention_mask, label_mask, labels)``: `label_mask` marks the tokens an
    entity may cover (not [CLS]/[SEP]); `labels` as :func:`collate` makes them. The head lives
    under ``classifier.`` so that loading an encoder checkpoint reports it as a new task head."""

    def __init__(self, config: SujiConfig):
        super().__init__(config)
        head = getattr(config, "ner_head", None)
        if head not in HEADS:
            raise ValueError(f"config.ner_head must be one of {HEADS}, got {head!r}")
        types = list(getattr(config, "ner_types", None) or [])
        if not types:
            raise ValueError("config.ner_types must name the entity types")
        self.suji = SujiModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        head_size = getattr(config, "ner_head_size", 64)
        if head == "global_pointer":
            self.classifier = GlobalPointer(config.hidden_size, len(types), head_size, rotary_base=config.rotary_base)
        elif head == "efficient_global_pointer":
            self.classifier = EfficientGlobalPointer(config.hidden_size, len(types), head_size,
                                                     rotary_base=config.rotary_base)
        else:
            self.classifier = CrfTagger(config.hidden_size, 1 + 2 * len(types),
                                        getattr(config, "crf_lr_multiplier", 1.0))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CRF):  # uniform transitions to start with
            for p in (module.raw_transitions, module.raw_start, module.raw_end):
                p.zero_()

    @property
    def head(self) -> str:
        return self.config.ner_head

    @property
    def types(self) -> list[str]:
        return list(self.config.ner_types)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                label_mask=None, labels=None, return_dict=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if label_mask is None:
            label_mask = attention_mask
        out = self.suji(input_ids, attention_mask, token_type_ids, position_ids)
        hidden = self.dropout(out.last_hidden_state)
        if self.head == "crf":
            emissions = self.classifier(hidden)
            loss = None
            if labels is not None:
                aligned, mask, _ = left_align(emissions, label_mask)
                tags, _, _ = left_align(labels.clamp(min=0), label_mask)
                rows = mask[:, 0]  # a row without any taggable token (empty text) has no path to score
                loss = self.classifier.crf.neg_log_likelihood(aligned[rows], tags[rows], mask[rows]).mean()
            return NerOutput(loss=loss, logits=emissions)
        scores = self.classifier(hidden, label_mask, position_ids)
        loss = None
        if labels is not None:
            flat = scores.reshape(scores.shape[0] * scores.shape[1], -1)
            loss = sparse_multilabel_categorical_crossentropy(labels.reshape(flat.shape[0], -1), flat).mean()
        return NerOutput(loss=loss, logits=scores)

    @torch.no_grad()
    def decode(self, logits: torch.Tensor, label_mask: torch.Tensor) -> list[list[tuple[int, int, int]]]:
        """Token spans (first, last inclusive, type id) per row from `forward`'s logits."""
        if self.head != "crf":
            return decode_spans(logits)
        aligned, mask, positions = left_align(logits.float(), label_mask)
        keep = mask.any(dim=1)
        out = [[] for _ in range(logits.shape[0])]
        rows = keep.nonzero().flatten().tolist()
        if not rows:
            return out
        paths = self.classifier.crf.decode(aligned[rows], mask[rows])
        names = crf_tag_names(self.types)
        type_id = {t: i for i, t in enumerate(self.types)}
        for b, path in zip(rows, paths):
            pos = positions[b].tolist()
            out[b] = sorted((pos[s], pos[e - 1], type_id[k]) for s, e, k in tags_to_spans([names[t] for t in path]))
        return out

    @classmethod
    def from_encoder(cls, path, head: str, types, head_size: int = 64, crf_lr_multiplier: float = 1.0,
                     **config_overrides):
        """A new NER model on the encoder of a Suji or transformers (bert / roformer / albert /
        gpt2) checkpoint folder; the head starts fresh (reported as a new task head)."""
        config = checkpoint_config(path)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        set_ner_config(config, head, types, head_size, crf_lr_multiplier)
        return cls.from_pretrained(path, config=config)


def set_ner_config(config: SujiConfig, head: str, types, head_size: int = 64, crf_lr_multiplier: float = 1.0):
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    config.ner_head, config.ner_types = head, list(types)
    config.ner_head_size, config.crf_lr_multiplier = int(head_size), float(crf_lr_multiplier)
    return config


# ---- prediction and the metric -------------------------------------------------------------------


def predict(model, tokenizer, texts, max_length: int = 512, batch_size: int = 32, device=None,
            overlap: int | None = None, forward=None) -> list[list[Span]]:
    """Entities of each text as character spans (start, end exclusive, type); nested output is
    possible with the GlobalPointer heads. Texts longer than `max_length` tokens are read in
    overlapping windows (see :func:`encode_windows`). `forward(batch)` runs the model (default: the
    module itself; the finetune driver passes its engine's)."""
    windows = encode_windows(tokenizer, texts, max_length, overlap)
    forward = forward or (lambda batch: model(**batch))
    found = predict_encoded(lambda batch: forward(batch).logits, model, windows.examples, tokenizer.pad_token_id,
                            batch_size, device or next(model.parameters()).device)
    return windows.merge(found)


@torch.no_grad()
def predict_encoded(forward, model, encoded, pad_token_id: int, batch_size: int = 32, device="cpu"):
    """Character spans for already encoded examples; `forward(batch) -> logits` runs the model
    (a DeepSpeed engine or the module). Batches are formed by length to limit padding."""
    types = model.types
    out: list[list[Span]] = [[] for _ in encoded]
    for chunk in length_batches([len(e.input_ids) for e in encoded], batch_size):
        batch = collate([encoded[j].as_row() for j in chunk], pad_token_id, "global_pointer", len(types))
        batch.pop("labels")
        batch = {k: v.to(device) for k, v in batch.items()}
        token_spans = model.decode(forward(batch), batch["label_mask"])
        for j, spans in zip(chunk, token_spans):
            chars = set()
            for first, last, t in spans:
                span = token_span_to_chars(encoded[j].offsets, first, last)
                if span is not None:
                    chars.add((span[0], span[1], types[t]))
            out[j] = sorted(chars)
    return out


def entity_counts(gold, pred) -> Counter:
    """tp / gold / pred counts, overall (key '') and per type, of sentence-aligned span lists."""
    return set_counts(gold, pred, kind_of=lambda span: span[2])


def entity_scores(gold, pred) -> dict:
    """Entity-level micro P/R/F1 on exact (start, end, type) matches; sentence-aligned span lists."""
    return scores_from_counts(entity_counts(gold, pred))


def write_predictions(path, texts, predictions) -> Path:
    """JSONL: one {"text", "entities": [{"start", "end", "type", "text"}]} per text (end exclusive)."""
    return write_jsonl(path, ({"text": text, "entities": [{"start": s, "end": e, "type": t, "text": text[s:e]}
                                                          for s, e, t in spans]}
                              for text, spans in zip(texts, predictions, strict=True)))


__all__ = [
    "FORMATS", "HEADS", "NerExample", "EncodedExample", "AlignmentReport", "NerOutput", "SujiForNer",
    "tags_to_spans", "spans_to_bio", "read_tagged", "read_cluener", "read_ner", "read_texts", "iter_json_objects",
    "entity_types", "split_examples", "encode_examples", "char_to_token_maps", "token_span_to_chars", "collate",
    "crf_tag_names", "left_align", "set_ner_config", "predict", "predict_encoded", "entity_counts",
    "scores_from_counts", "entity_scores", "write_predictions", "Windows", "encode_windows",
]
