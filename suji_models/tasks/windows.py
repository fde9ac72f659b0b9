"""Texts longer than the model window, read in overlapping windows; answers merged once per text."""

from __future__ import annotations

from dataclasses import dataclass

from .offsets import EncodedText, special_tokens


@dataclass
class Windows:
    """Texts cut into model-sized windows: `examples` to run, and per window the text it belongs to
    and the character range [start, end) it answers for."""

    examples: list[EncodedText]
    shares: list[tuple[int, float, float]]
    texts: int

    def merge(self, found, start_of=lambda item: item[0]) -> list[list]:
        """Per text, the items of its windows (`found`, a list per window, in window order), each kept
        from the window whose share holds its first character (`start_of(item)`)."""
        out: list[set] = [set() for _ in range(self.texts)]
        for (n, lo, hi), items in zip(self.shares, found, strict=True):
            out[n].update(item for item in items if lo <= start_of(item) < hi)
        return [sorted(items) for items in out]

    def text_of(self, window: int) -> int:
        return self.shares[window][0]


def encode_windows(tokenizer, texts, max_length: int, overlap: int | None = None) -> Windows:
    """Cut each text into windows of at most `max_length` tokens (special tokens included) that
    overlap by `overlap` tokens (default: a quarter of the room a window has for text).

    Each window answers for the tokens of its middle: the overlap is split in half between
    neighbours, so a span is taken from the window in which its first token has at least half the
    overlap of context on either side, and every span is found once. A span that reaches more than
    half the overlap past the end of its window is lost; a larger `overlap` keeps it."""
    prefix, suffix = special_tokens(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    overlap = room // 4 if overlap is None else overlap
    if room < 1 or not 0 <= overlap < room:
        raise ValueError(f"max_length {max_length} leaves {room} tokens per window; overlap must be in [0, {room})")
    pieces = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True) if texts else None
    windows = Windows([], [], len(texts))
    for n in range(len(texts)):
        ids, offsets = pieces["input_ids"][n], [tuple(o) for o in pieces["offset_mapping"][n]]
        starts = list(range(0, max(len(ids) - overlap, 1), room - overlap))
        for k, a in enumerate(starts):
            b = min(a + room, len(ids))
            first = a + overlap // 2 if k else 0  # this window's share of the tokens: [first, last)
            last = starts[k + 1] + overlap // 2 if k + 1 < len(starts) else len(ids)
            row_offsets = [(0, 0)] * len(prefix) + offsets[a:b] + [(0, 0)] * len(suffix)
            label_mask = [0] * len(prefix) + [1] * (b - a) + [0] * len(suffix)
            windows.examples.append(EncodedText(prefix + ids[a:b] + suffix, row_offsets, label_mask))
            windows.shares.append((n, offsets[first][0] if k else 0,
                                   offsets[last][0] if last < len(ids) else float("inf")))
    return windows
