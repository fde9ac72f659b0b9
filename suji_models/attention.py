"""Attention masks, rotary positions and the attention kernels of the Suji core.

Masks are boolean tensors broadcastable to [batch, heads, queries, keys]; True means "may attend".
`None` means every query sees every key, which lets SDPA pick its fastest kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASK_KINDS = ("bidirectional", "causal", "unilm", "prefix")


def build_attention_mask(
    kind: str,
    query_length: int,
    key_length: int,
    attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Boolean mask [batch|1, 1, query_length, key_length] for one mask kind.

    Queries are the last `query_length` of the `key_length` positions (the earlier ones come
    from the KV cache).
    - bidirectional: every query sees every non-padding key.
    - causal: query i sees keys j <= i.
    - unilm / prefix: seq2seq in one stack (UniLM) and prefix-LM (GPT-style prompts) are one rule.
      `segment_ids` is 0 on the source / prefix and 1 on the target / continuation; with
      c = cumsum(segment_ids), query i sees key j iff c[j] <= c[i]: the source sees the whole
      source, the target sees the source and its own earlier tokens. With a KV cache the new
      tokens are target tokens appended at the end, for which the rule reduces to causal.
    `document_ids` ([batch, key_length]) packs several documents in one row: a query only sees
    keys of its own document (block-diagonal), on top of the kind's rule.
    `attention_mask` ([batch, key_length], 1 = real token, 0 = padding) removes padding keys.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown attention mask kind {kind!r}; expected one of {MASK_KINDS}")
    past = key_length - query_length
    allowed = None
    if kind == "causal" or (kind in ("unilm", "prefix") and past > 0):
        q_pos = torch.arange(past, key_length, device=device)
        k_pos = torch.arange(key_length, device=device)
        allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]
    elif kind in ("unilm", "prefix"):
        if segment_ids is None:
            raise ValueError(f"the {kind} mask needs segment ids (0 = source/prefix, 1 = target)")
        _check_length("segment ids", segment_ids, key_length)
        order = torch.cumsum(segment_ids, dim=-1)
        allowed = (order[:, None, :] <= order[:, :, None])[:, None]
    if document_ids is not None:
        _check_length("document_ids", document_ids, key_length)
        same = (document_ids[:, None, :] == document_ids[:, past:, None])[:, None]
        allowed = same if allowed is None else allowed & same
    if attention_mask is not None:
        _check_length("attention_mask", attention_mask, key_length)
        keys = attention_mask.bool()[:, None, None, :]
        allowed = keys if allowed is None else allowed & keys
    if allowed is not None:
        # A query with no visible key (a padding row) would softmax over nothing and give NaN;
        # let it see everything instead: its output is never used.
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return allowed


def _check_length(name, tensor, key_length):
    if tensor.shape[-1] != key_length:
        raise ValueError(f"{name} has length {tensor.shape[-1]}, expected {key_length} (cache + input)")


def positions_from_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 at every document start of a packed row."""
    index = torch.arange(document_ids.shape[-1], device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return index - torch.cummax(torch.where(starts, index, 0), dim=-1).values


def entropy_scale_factor(mask: torch.Tensor | None, key_length: int, base_length: int, device=None) -> torch.Tensor:
    """Per-query factor log(n) / log(base_length), n = number of keys the query may attend to.

    Clipping: n is clipped below at 1. A query that sees a single key gets factor 0, which changes
    nothing (softmax over one key is 1 whatever the scale); no other clipping is applied, so short
    rows get the small scale the entropy-invariance argument asks for.
    """
    if mask is None:
        n = torch.tensor(float(key_length), device=device)
    else:
        n = mask.sum(dim=-1, keepdim=True).float()  # [batch|1, 1, queries, 1]
    return torch.log(n.clamp(min=1)) / math.log(base_length)


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


def attention_scores(q, k, scale: float, previous_scores=None):
    """Pre-softmax scores q k^T * scale, plus the previous layer's scores under RealFormer."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return scores if previous_scores is None else scores + previous_scores


def eager_attention(q, k, v, mask, scale: float, dropout_p: float = 0.0, training: bool = False,
                    previous_scores=None):
    """Reference attention written out: softmax(scores + mask) v. Returns (output, scores); the
    scores (before masking) feed the next layer under RealFormer residual attention."""
    scores = attention_scores(q, k, scale, previous_scores)
    masked = scores if mask is None else scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(masked.float(), dim=-1).to(q.dtype)
    probs = F.dropout(probs, p=dropout_p, training=training)
    return torch.matmul(probs, v), scores


def sdpa_attention(q, k, v, mask, scale: float, dropout_p: float = 0.0, training: bool = False):
    """PyTorch's fused kernels (flash / memory-efficient on GPU) with the same semantics. They never
    materialize the scores, so residual attention (which must pass them on) always takes the eager
    route: computing q k^T once there is cheaper than SDPA plus a second q k^T for the next layer."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p if training else 0.0,
                                         scale=scale)
    return out, None


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
