"""GPLinker: entity spans and the links between them, all scored as GlobalPointer matrices.

From "GPLinker：基于GlobalPointer的实体关系联合抽取" (kexue.fm/archives/8888) and
"GPLinker：基于GlobalPointer的事件联合抽取" (kexue.fm/archives/8926). Three pointers read the same
token states h_1..h_L:

- an *entity* pointer (GlobalPointer or Efficient GlobalPointer, with RoPE, spans i <= j): which
  token spans are entities, per entity type (relations: subject / object; events: one type per
  (event type, role), the trigger being one more role);
- a *head link* pointer: per link type p, s_p(i, j) > 0 when an entity starting at token i is linked
  to an entity starting at token j (relations: subject head -> object head for predicate p;
  events: two arguments of one event);
- a *tail link* pointer: the same for the last tokens of the two entities.

The link pointers are GlobalPointers without RoPE (the link does not depend on the distance) and
without the i <= j triangle (a subject may come after its object), as the posts build them
(``GlobalPointer(..., RoPE=False, tril_mask=False)``):

    s_p(i, j) = q_{i,p}^T k_{j,p} / sqrt(d)                                   (GlobalPointer)
    s_p(i, j) = q_i^T k_j / sqrt(d) + (w_{p,start}^T u_i + w_{p,end}^T u_j + b_p) / 2  (Efficient)

Their parameters are those of :class:`GlobalPointer` / :class:`EfficientGlobalPointer` built with
``rope=False`` (the upper triangle of the scores is exactly theirs; a test checks it); only the mask
differs: every ordered pair of unmasked tokens is allowed. Where a link has no direction (two
arguments of one event, written (min, max) in the event post), ``triangular_links=True`` uses
GlobalPointer / Efficient GlobalPointer themselves, upper triangle only, as that post does.
"""

from __future__ import annotations

import torch
from torch import nn

from .global_pointer import INVALID_SCORE, EfficientGlobalPointer, GlobalPointer

HEADS = ("global_pointer", "efficient_global_pointer")


def pair_mask(attention_mask: torch.Tensor | None, length: int, device=None) -> torch.Tensor:
    """[batch|1, 1, L, L] boolean: True where both tokens are unmasked (any order, diagonal included)."""
    if attention_mask is None:
        return torch.ones(1, 1, length, length, dtype=torch.bool, device=device)
    keep = attention_mask.bool()
    return keep[:, None, :, None] & keep[:, None, None, :]


def _finish_links(scores: torch.Tensor, attention_mask) -> torch.Tensor:
    if scores.dtype in (torch.float16, torch.bfloat16):  # INVALID_SCORE and the loss need float32's range
        scores = scores.float()
    return scores.masked_fill(~pair_mask(attention_mask, scores.shape[-1], scores.device), INVALID_SCORE)


class GlobalLinkPointer(GlobalPointer):
    """Per-type q/k projections, no RoPE, every ordered pair (i, j) scored: [B, types, L, L]."""

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, bias: bool = True):
        super().__init__(hidden_size, num_types, head_size, rope=False, bias=bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = hidden.shape
        qk = self.dense(hidden).view(batch, length, self.num_types, 2, self.head_size)
        q, k = qk[..., 0, :].transpose(1, 2), qk[..., 1, :].transpose(1, 2)  # [B, T, L, D]
        return _finish_links(torch.matmul(q, k.transpose(-1, -2)) / self.head_size ** 0.5, attention_mask)


class EfficientLinkPointer(EfficientGlobalPointer):
    """Shared q/k plus per-type start/end terms, no RoPE, every ordered pair scored: [B, types, L, L]."""

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, bias: bool = True):
        super().__init__(hidden_size, num_types, head_size, rope=False, bias=bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = hidden.shape
        u = self.dense(hidden)  # [B, L, 2D]
        q, k = u[..., : self.head_size][:, None], u[..., self.head_size:][:, None]
        shared = torch.matmul(q, k.transpose(-1, -2)) / self.head_size ** 0.5  # [B, 1, L, L]
        terms = self.type_dense(u).view(batch, length, self.num_types, 2).permute(0, 2, 1, 3) / 2
        return _finish_links(shared + terms[..., 0, None] + terms[..., None, :, 1], attention_mask)


class GPLinkerHead(nn.Module):
    """The three pointers of GPLinker over encoder states.

    ``forward(hidden, label_mask, position_ids) -> (entity [B, E, L, L], head [B, P, L, L],
    tail [B, P, L, L])``; `label_mask` marks the tokens an entity may cover (not [CLS]/[SEP]),
    and links are only scored between such tokens. `head` picks GlobalPointer or Efficient
    GlobalPointer for all three pointers (the posts' two variants)."""

    def __init__(self, hidden_size: int, num_entity_types: int, num_link_types: int,
                 head: str = "global_pointer", head_size: int = 64, rotary_base: float = 10000.0,
                 triangular_links: bool = False):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if num_entity_types < 1 or num_link_types < 1:
            raise ValueError(f"need at least one entity type and one link type, got {num_entity_types}, "
                             f"{num_link_types}")
        entity_cls, link_cls = ((GlobalPointer, GlobalLinkPointer) if head == "global_pointer"
                                else (EfficientGlobalPointer, EfficientLinkPointer))
        self.entity = entity_cls(hidden_size, num_entity_types, head_size, rotary_base=rotary_base)
        if triangular_links:  # undirected links, scored for i <= j only
            self.head_links = entity_cls(hidden_size, num_link_types, head_size, rope=False)
            self.tail_links = entity_cls(hidden_size, num_link_types, head_size, rope=False)
        else:
            self.head_links = link_cls(hidden_size, num_link_types, head_size)
            self.tail_links = link_cls(hidden_size, num_link_types, head_size)

    def forward(self, hidden: torch.Tensor, label_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None):
        return (self.entity(hidden, label_mask, position_ids),
                self.head_links(hidden, label_mask),
                self.tail_links(hidden, label_mask))


__all__ = ["HEADS", "GPLinkerHead", "GlobalLinkPointer", "EfficientLinkPointer", "pair_mask"]
