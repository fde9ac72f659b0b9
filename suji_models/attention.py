"""Attention masks, rotary positions and the attention kernels of the Suji core.

Masks are boolean tensors broadcastable to [batch, heads, queries, keys]; True means "may attend".
`None` means every query sees every key, which lets SDPA pick its fastest kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASK_KINDS = ("bidirectional", "causal", "unilm")


def build_attention_mask(
    kind: str,
    query_length: int,
    key_length: int,
    attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Boolean mask [batch|1, 1, query_length, key_length] for one mask kind.

    Queries are the last `query_length` of the `key_length` positions (the earlier ones come
    from the KV cache).
    - bidirectional: every query sees every non-padding key.
    - causal: query i sees keys j <= i.
    - unilm: seq2seq in one encoder (UniLM). `segment_ids` is 0 on the source and 1 on the target;
      with c = cumsum(segment_ids), query i sees key j iff c[j] <= c[i], i.e. source tokens see the
      whole source, target tokens see the source and the earlier target tokens. With a KV cache the
      new tokens are target tokens appended at the end, for which the rule reduces to causal.
    `attention_mask` ([batch, key_length], 1 = real token, 0 = padding) removes padding keys.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown attention mask kind {kind!r}; expected one of {MASK_KINDS}")
    past = key_length - query_length
    allowed = None
    if kind == "causal" or (kind == "unilm" and past > 0):
        q_pos = torch.arange(past, key_length, device=device)
        k_pos = torch.arange(key_length, device=device)
        allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]
    elif kind == "unilm":
        if segment_ids is None:
            raise ValueError("the unilm mask needs segment ids (token_type_ids: 0 = source, 1 = target)")
        if segment_ids.shape[-1] != key_length:
            raise ValueError(f"segment ids have length {segment_ids.shape[-1]}, expected {key_length}")
        order = torch.cumsum(segment_ids, dim=-1)
        allowed = (order[:, None, :] <= order[:, :, None])[:, None]
    if attention_mask is not None:
        if attention_mask.shape[-1] != key_length:
            raise ValueError(f"attention_mask has length {attention_mask.shape[-1]}, expected {key_length} (cache + input)")
        keys = attention_mask.bool()[:, None, None, :]
        allowed = keys if allowed is None else allowed & keys
        # A query with no visible key (a padding row under a causal mask) would softmax over
        # nothing and give NaN; let it see everything instead: its output is never used.
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return allowed


def rotary_cos_sin(position_ids: torch.Tensor, dim: int, base: float, dtype: torch.dtype):
    """cos and sin of RoPE angles for `position_ids` [batch, length] -> [batch, 1, length, dim].

    Pairs are interleaved (dims 2i and 2i+1 rotate together by angle pos * base^(-2i/dim)), as in
    RoFormer, bert4keras and HF's RoFormer. Angles are computed in float64 so that long positions
    keep full precision before the cast.
    """
    inv_freq = base ** (-torch.arange(0, dim, 2, device=position_ids.device, dtype=torch.float64) / dim)
    angles = position_ids.to(torch.float64)[..., None] * inv_freq
    angles = angles.repeat_interleave(2, dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)."""
    rotated = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape_as(x)
    return x * cos + rotated * sin


def eager_attention(q, k, v, mask, scale: float, dropout_p: float = 0.0, training: bool = False):
    """Reference attention written out: softmax(q k^T * scale + mask) v. Used by tests and when the
    attention probabilities themselves are needed."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    probs = F.dropout(probs, p=dropout_p, training=training)
    return torch.matmul(probs, v)


def sdpa_attention(q, k, v, mask, scale: float, dropout_p: float = 0.0, training: bool = False):
    """PyTorch's fused kernels (flash / memory-efficient on GPU) with the same semantics."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p if training else 0.0, scale=scale
    )


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
