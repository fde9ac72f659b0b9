"""R-Drop ("又是Dropout两次！这次它做到了有监督任务的SOTA", kexue.fm/archives/8496; Liang et al. 2021):
feed every example twice (two dropout masks) and add the symmetric KL divergence of the two
predicted distributions to the task loss. As in the post's bert4keras code, the batch is doubled
(each row next to its copy) and

    L = CE over the 2B rows (mean) + alpha / 4 * mean_b [ KL(p_b || p'_b) + KL(p'_b || p_b) ]

(the paper's CE_1 + CE_2 + alpha/2 (KL + KL), divided by 2). For softmax classifiers: the model's
output must carry `.logits` [2B, C] and `.loss` (its cross-entropy on the doubled batch).
Dropout must be on (train mode) or both copies are identical and the KL is 0.

ZeRO-1/2/3: nothing but a larger batch in one forward and one backward; it composes with every stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """KL(p_a || p_b) + KL(p_b || p_a) per row (softmax over the last axis)."""
    log_a, log_b = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    return ((log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(-1)


def double_batch(batch: dict) -> dict:
    """Every tensor with a batch axis repeated row by row (rows 2i and 2i + 1 are copies of row i)."""
    size = next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.ndim)
    return {k: v.repeat_interleave(2, dim=0) if torch.is_tensor(v) and v.ndim and v.shape[0] == size else v
            for k, v in batch.items()}


class RDrop:
    name = "rdrop"
    refused_under_zero3 = None

    def __init__(self, alpha: float = 4.0):
        self.alpha = alpha

    def loss(self, engine, batch) -> torch.Tensor:
        out = engine(**double_batch(batch))
        logits = out.logits
        return out.loss + self.alpha / 4 * symmetric_kl(logits[0::2], logits[1::2]).mean()
