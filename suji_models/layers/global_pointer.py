"""GlobalPointer and Efficient GlobalPointer: span scores for (nested) NER and span extraction.

GlobalPointer ("GlobalPointer：用统一的方式处理嵌套和非嵌套NER", kexue.fm/archives/8373): for each
entity type a, project every token state h_i to q_{i,a} and k_{i,a} (head_size each), rotate both
by the token's position (RoPE, so the score sees the relative distance j - i), and score the span
from token i to token j (inclusive) as

    s_a(i, j) = q_{i,a}^T k_{j,a} / sqrt(head_size)

Efficient GlobalPointer ("Efficient GlobalPointer：少点参数，多点效果", kexue.fm/archives/8877) shares
one q/k projection between all types and adds per-type start / end terms read from the shared
projection u_i = [q_i; k_i] (before rotation):

    s_a(i, j) = q_i^T k_j / sqrt(head_size) + (w_{a,start}^T u_i + w_{a,end}^T u_j + b_a) / 2

(the "recognize the span, then classify it" split: the parameter count of the head no longer
grows with num_types * hidden_size * head_size).

Both return scores [batch, num_types, L, L]; spans with j < i and spans touching a masked token
(padding, [CLS]/[SEP] when the caller masks them) are set to a very negative value, so a span is
predicted iff its score is > 0 and the ZLPR losses in :mod:`suji_models.losses` treat the invalid
ones as certain negatives.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import apply_rotary, rotary_cos_sin

# Scores of impossible spans. Finite (not -inf) so that a loss never sees inf - inf; in float32
# e^{-1e12} is 0. Half-precision scores are returned in float32 (see `_finish`).
INVALID_SCORE = -1e12


def span_mask(attention_mask: torch.Tensor | None, length: int, device=None) -> torch.Tensor:
    """[batch|1, 1, L, L] boolean: True where the span (i, j) is allowed, i.e. j >= i and both ends
    are unmasked tokens."""
    upper = torch.ones(length, length, dtype=torch.bool, device=device).triu()[None, None]
    if attention_mask is None:
        return upper
    keep = attention_mask.bool()
    return upper & keep[:, None, :, None] & keep[:, None, None, :]


def _rotate(x: torch.Tensor, position_ids: torch.Tensor | None, base: float) -> torch.Tensor:
    """RoPE on [B, heads, L, D] (interleaved pairs, as the RoFormer core)."""
    batch, _, length, dim = x.shape
    if position_ids is None:
        position_ids = torch.arange(length, device=x.device).expand(batch, -1)
    cos, sin = rotary_cos_sin(position_ids, dim, base, x.dtype)
    return apply_rotary(x, cos, sin)


def _finish(scores: torch.Tensor, attention_mask, length) -> torch.Tensor:
    if scores.dtype in (torch.float16, torch.bfloat16):  # -1e12 and the loss need float32's range
        scores = scores.float()
    return scores.masked_fill(~span_mask(attention_mask, length, scores.device), INVALID_SCORE)


def _set_pointer_shape(module, num_types: int, head_size: int, rope: bool, rotary_base: float) -> None:
    """The settings both pointer heads share; RoPE rotates pairs of dimensions, so head_size must be even."""
    if rope and head_size % 2:
        raise ValueError(f"RoPE needs an even head_size, got {head_size}")
    module.num_types, module.head_size, module.rope, module.rotary_base = num_types, head_size, rope, rotary_base


class GlobalPointer(nn.Module):
    """Per-type q/k projections with RoPE; see the module docstring."""

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, rope: bool = True,
                 rotary_base: float = 10000.0, bias: bool = True):
        super().__init__()
        _set_pointer_shape(self, num_types, head_size, rope, rotary_base)
        self.dense = nn.Linear(hidden_size, num_types * head_size * 2, bias=bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = hidden.shape
        # [B, L, T, 2, D] -> q, k as [B, T, L, D]
        qk = self.dense(hidden).view(batch, length, self.num_types, 2, self.head_size)
        q, k = qk[..., 0, :].transpose(1, 2), qk[..., 1, :].transpose(1, 2)
        if self.rope:
            q, k = _rotate(q, position_ids, self.rotary_base), _rotate(k, position_ids, self.rotary_base)
        scores = torch.matmul(q, k.transpose(-1, -2)) / self.head_size ** 0.5
        return _finish(scores, attention_mask, length)


class EfficientGlobalPointer(nn.Module):
    """One shared q/k projection plus per-type start/end terms; see the module docstring."""

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, rope: bool = True,
                 rotary_base: float = 10000.0, bias: bool = True):
        super().__init__()
        _set_pointer_shape(self, num_types, head_size, rope, rotary_base)
        self.dense = nn.Linear(hidden_size, head_size * 2, bias=bias)  # u_i = [q_i; k_i]
        self.type_dense = nn.Linear(head_size * 2, num_types * 2, bias=bias)  # per type: start, end

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = hidden.shape
        u = self.dense(hidden)  # [B, L, 2D]
        q, k = u[..., : self.head_size][:, None], u[..., self.head_size:][:, None]  # [B, 1, L, D]
        if self.rope:
            q, k = _rotate(q, position_ids, self.rotary_base), _rotate(k, position_ids, self.rotary_base)
        shared = torch.matmul(q, k.transpose(-1, -2)) / self.head_size ** 0.5  # [B, 1, L, L]
        terms = self.type_dense(u).view(batch, length, self.num_types, 2).permute(0, 2, 1, 3) / 2  # [B, T, L, 2]
        scores = shared + terms[..., 0, None] + terms[..., None, :, 1]  # start term by row i, end term by column j
        return _finish(scores, attention_mask, length)


def decode_spans(scores: torch.Tensor, threshold: float = 0.0) -> list[list[tuple[int, int, int]]]:
    """Spans (start_token, end_token inclusive, type) with score > threshold, per batch row, sorted."""
    batch, types, i, j = torch.nonzero(scores > threshold, as_tuple=True)
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(scores.shape[0])]
    for b, t, s, e in zip(batch.tolist(), types.tolist(), i.tolist(), j.tolist()):
        out[b].append((s, e, t))
    return [sorted(row) for row in out]


__all__ = ["GlobalPointer", "EfficientGlobalPointer", "span_mask", "decode_spans", "INVALID_SCORE"]
