"""Linear-chain CRF over per-token tag scores (the CRF baseline of sequence labelling).

A tag path y_1..y_n of a sentence scores

    score(y) = start[y_1] + sum_t emit[t, y_t] + sum_{t>1} trans[y_{t-1}, y_t] + end[y_n]

and p(y | x) = exp(score(y)) / Z with Z = sum over all paths (forward algorithm, in log space).
Decoding is Viterbi (the highest-scoring path). Sequences in a batch are left-aligned: `mask` is
1 on a prefix of each row (at least the first position) and 0 after it.

`lr_multiplier` (bert4keras' `crf_lr_multiplier`): the transition parameters are stored divided by
it and multiplied back in the forward pass. Under Adam this multiplies their effective learning
rate by the same factor, which they need: a learning rate fit for the encoder moves the
transitions far too slowly.
"""

from __future__ import annotations

import torch
from torch import nn


class CRF(nn.Module):
    def __init__(self, num_tags: int, lr_multiplier: float = 1.0):
        super().__init__()
        self.num_tags, self.lr_multiplier = num_tags, float(lr_multiplier)
        self.raw_transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        self.raw_start = nn.Parameter(torch.zeros(num_tags))
        self.raw_end = nn.Parameter(torch.zeros(num_tags))

    @property
    def transitions(self) -> torch.Tensor:
        return self.raw_transitions * self.lr_multiplier

    @property
    def start_transitions(self) -> torch.Tensor:
        return self.raw_start * self.lr_multiplier

    @property
    def end_transitions(self) -> torch.Tensor:
        return self.raw_end * self.lr_multiplier

    @staticmethod
    def _check(emissions, mask):
        if mask is None:
            return torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        mask = mask.bool()
        if not bool(mask[:, 0].all()):
            raise ValueError("CRF: the first position of every sequence must be unmasked (left-aligned rows)")
        return mask

    def path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """score(y) of the given tag paths: emissions [B, L, T], tags [B, L] -> [B]."""
        emissions = emissions.float()
        mask = self._check(emissions, mask)
        tags = tags.masked_fill(~mask, 0).long()
        m = mask.float()
        emit = emissions.gather(-1, tags[..., None]).squeeze(-1)  # [B, L]
        score = self.start_transitions[tags[:, 0]] + (emit * m).sum(-1)
        trans = self.transitions[tags[:, :-1], tags[:, 1:]]  # [B, L-1]
        score = score + (trans * m[:, 1:]).sum(-1)
        last = mask.long().sum(-1) - 1
        return score + self.end_transitions[tags.gather(1, last[:, None]).squeeze(1)]

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log Z by the forward algorithm: [B]."""
        emissions = emissions.float()
        mask = self._check(emissions, mask)
        alpha = self.start_transitions + emissions[:, 0]  # [B, T]: log-sum of paths ending in each tag
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha[:, :, None] + self.transitions[None] + emissions[:, t, None, :], dim=1)
            alpha = torch.where(mask[:, t, None], step, alpha)
        return torch.logsumexp(alpha + self.end_transitions, dim=-1)

    def neg_log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(tags | x) per sequence: [B]."""
        return self.log_partition(emissions, mask) - self.path_score(emissions, tags, mask)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> list[list[int]]:
        """Viterbi: the best tag path of each sequence (only its unmasked length)."""
        emissions = emissions.float()
        mask = self._check(emissions, mask)
        score = self.start_transitions + emissions[:, 0]
        history = []
        for t in range(1, emissions.shape[1]):
            candidates = score[:, :, None] + self.transitions[None]  # [B, from, to]
            best, back = candidates.max(dim=1)
            step = best + emissions[:, t]
            score = torch.where(mask[:, t, None], step, score)
            # a masked step keeps the path: point every tag back to itself
            keep = torch.arange(self.num_tags, device=emissions.device).expand_as(back)
            history.append(torch.where(mask[:, t, None], back, keep))
        score = score + self.end_transitions
        lengths = mask.long().sum(-1).tolist()
        best_last = score.argmax(-1).tolist()
        paths = []
        for b, length in enumerate(lengths):
            tag, path = best_last[b], [best_last[b]]
            for back in reversed(history[: length - 1]):
                tag = int(back[b, tag])
                path.append(tag)
            paths.append(path[::-1])
        return paths


__all__ = ["CRF"]
