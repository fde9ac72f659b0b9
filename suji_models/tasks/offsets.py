"""Characters <-> tokens through the tokenizer's offsets: every span task answers in the
characters of the original text, whatever the tokenizer did to it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EncodedText:
    """One model row: token ids, each token's character range ((0, 0) for special tokens), and
    `label_mask` (1 on the tokens that carry text, 0 on [CLS] / [SEP])."""

    input_ids: list[int]
    offsets: list[tuple[int, int]]
    label_mask: list[int] = field(default_factory=list)

    def as_row(self) -> dict:
        return {"input_ids": self.input_ids, "label_mask": self.label_mask}


def char_to_token_maps(offsets):
    """{char start: token} and {char end: token} over the non-special tokens of one sequence."""
    starts, ends = {}, {}
    for t, (s, e) in enumerate(offsets):
        if e > s:
            starts.setdefault(s, t)
            ends[e] = t
    return starts, ends


def token_span_to_chars(offsets, first: int, last: int) -> tuple[int, int] | None:
    """Character span (start, end exclusive) of tokens first..last, None if it touches a special token."""
    if first > last or offsets[first][1] <= offsets[first][0] or offsets[last][1] <= offsets[last][0]:
        return None
    return offsets[first][0], offsets[last][1]


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] / [SEP] for BERT)."""
    encoded = tokenizer("中", return_special_tokens_mask=True)
    mask, ids = encoded["special_tokens_mask"], encoded["input_ids"]
    body = [i for i, m in enumerate(mask) if not m]
    if not body:
        raise ValueError("the tokenizer produced no text token for '中'")
    return ids[:body[0]], ids[body[-1] + 1:]
