"""Reusable losses from Su Jianlin's blog, written from their formulas.

Multilabel categorical cross-entropy (ZLPR, "将“softmax+交叉熵”推广到多标签分类问题",
kexue.fm/archives/7359): for scores s over n classes with positive set P and negative set N,

    L = log(1 + sum_{j in N} e^{s_j}) + log(1 + sum_{i in P} e^{-s_i})

i.e. every positive score should beat every negative score and the threshold 0 sits between them
(predict the classes with s > 0). It needs no class weighting however unbalanced the labels are,
which is why GlobalPointer uses it over the O(L^2) span candidates of a sentence.

- :func:`multilabel_categorical_crossentropy`: dense 0/1 targets, same shape as the scores.
- :func:`sparse_multilabel_categorical_crossentropy`: positives given as class indices (GlobalPointer:
  L*L candidates per type but a handful of entities), computed without materializing the dense
  target through log(1 + sum_N e^s) = log(sum_{all, 0} e^s) + log(1 - e^{lse_P(s) - lse_{all,0}(s)}).
- :func:`soft_multilabel_categorical_crossentropy`: soft targets t in [0, 1]
  ("多标签“Softmax+交叉熵”的软标签版本", kexue.fm/archives/9064):

      L = log(1 + sum_i t_i e^{-s_i}) + log(1 + sum_i (1 - t_i) e^{s_i})

  which equals the dense loss for 0/1 targets; its minimum is at s_i = log(t_i / (1 - t_i)) / 2
  (both log-sums are then equal, so sigmoid(2 s_i) = t_i).

All three return one loss per row (the class axis is the last one); reduce as you like.
"""

from __future__ import annotations

import torch


def _lse_with_zero(x: torch.Tensor) -> torch.Tensor:
    """log(1 + sum exp(x)) over the last axis: logsumexp with an extra 0 score (the threshold)."""
    return torch.logsumexp(torch.cat([x, torch.zeros_like(x[..., :1])], dim=-1), dim=-1)


def multilabel_categorical_crossentropy(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """ZLPR with dense targets: `y_true` (0/1, any dtype) and `y_pred` (raw scores, no sigmoid or
    softmax) of the same shape [..., n]; returns [...]. Scores of impossible classes may be set to
    a very negative value (they then count as confident negatives and add nothing)."""
    y_pred = y_pred.float()
    positive = y_true.bool()
    neg_inf = torch.finfo(y_pred.dtype).min
    negatives = y_pred.masked_fill(positive, neg_inf)  # s_j for j in N
    positives = (-y_pred).masked_fill(~positive, neg_inf)  # -s_i for i in P
    return _lse_with_zero(negatives) + _lse_with_zero(positives)


def sparse_multilabel_categorical_crossentropy(
    y_true: torch.Tensor, y_pred: torch.Tensor, ignore_index: int = -1, epsilon: float = 1e-7
) -> torch.Tensor:
    """ZLPR with positives given as indices: `y_true` [..., k] (long) holds the positive classes of
    each row of `y_pred` [..., n], padded with `ignore_index`; indices must be unique within a row.
    Returns [...]. Equal to :func:`multilabel_categorical_crossentropy` on the dense targets."""
    y_pred = y_pred.float()
    pad = y_true == ignore_index
    index = y_true.masked_fill(pad, 0).long()
    picked = torch.gather(y_pred, -1, index)  # s_i for each listed positive
    # log(1 + sum_P e^{-s}); padding contributes e^{-inf} = 0
    pos_loss = _lse_with_zero((-picked).masked_fill(pad, float("-inf")))
    # log(1 + sum_N e^{s}) = log(1 + sum_all e^s) + log(1 - sum_P e^s / (1 + sum_all e^s))
    all_loss = _lse_with_zero(y_pred)
    pos_share = torch.logsumexp(picked.masked_fill(pad, float("-inf")), dim=-1) - all_loss
    neg_loss = all_loss + torch.log(torch.clamp(1 - torch.exp(pos_share), min=epsilon, max=1.0))
    return pos_loss + neg_loss


def soft_multilabel_categorical_crossentropy(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """ZLPR with soft targets t in [0, 1] (same shape as the scores): log(1 + sum t e^{-s}) +
    log(1 + sum (1 - t) e^{s}). Returns [...]."""
    y_pred = y_pred.float()
    t = y_true.to(y_pred.dtype).clamp(0.0, 1.0)
    # log(t) is -inf where t = 0: that class simply drops out of the sum (logsumexp handles -inf)
    return _lse_with_zero(torch.log(t) - y_pred) + _lse_with_zero(torch.log1p(-t) + y_pred)


def cosent_loss(cosines: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT ("CoSENT（一）：比Sentence-BERT更有效的句向量方案", kexue.fm/archives/8847): for pairs i, j of a
    batch whose labels say pair j is more similar than pair i (label_i < label_j), the cosine of pair i
    should be below that of pair j:

        L = log(1 + sum_{label_i < label_j} e^{scale (cos_i - cos_j)})

    `cosines` [B] are the cosines of each pair's two sentence vectors, `labels` [B] any ordered scores
    (0/1 or graded 0-5; only their order matters). Returns a scalar. Pairs with equal labels add nothing."""
    s = cosines.float() * scale
    labels = labels.to(s.device)
    differences = s[:, None] - s[None, :]  # [i, j] = s_i - s_j
    wrong_order = labels[:, None] < labels[None, :]
    return _lse_with_zero(differences.masked_fill(~wrong_order, float("-inf")).reshape(-1))



# ---- Sparse Softmax ("SPACES：“抽取-生成”式长文本摘要（法研杯总结）") -----------------------------
# Cross entropy over the top-k logits only: L = log sum_{i in Omega_k} e^{s_i} - s_t, where Omega_k
# holds the k largest logits and always the target t. Tokens outside the top k get no push-down, so
# the model stops spending capacity on the long tail; with k >= vocabulary size it is plain CE. At
# inference the matching distribution is the softmax of the top k, renormalized (zero elsewhere).


def _top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(int(k), logits.shape[-1])
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)


def sparse_softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, k: int,
                                 ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Sparse Softmax loss: `logits` [..., V], `labels` [...] (class indices, `ignore_index` skipped).
    The target's logit always belongs to the kept set. `reduction`: 'mean' over non-ignored
    positions, 'sum', or 'none' (0 at ignored positions)."""
    if k < 1:
        raise ValueError(f"sparse softmax needs k >= 1, got {k}")
    logits = logits.float()
    ignored = labels == ignore_index
    target = labels.masked_fill(ignored, 0).long()
    keep = _top_k_mask(logits, k).scatter_(-1, target[..., None], True)
    normalizer = torch.logsumexp(logits.masked_fill(~keep, float("-inf")), dim=-1)
    loss = (normalizer - logits.gather(-1, target[..., None]).squeeze(-1)).masked_fill(ignored, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (~ignored).sum().clamp(min=1)


def sparse_softmax(logits: torch.Tensor, k: int, log: bool = False) -> torch.Tensor:
    """Inference counterpart of :func:`sparse_softmax_cross_entropy`: softmax over the top-k
    logits of the last axis, 0 (or -inf with `log=True`) elsewhere."""
    masked = logits.float().masked_fill(~_top_k_mask(logits, k), float("-inf"))
    return masked.log_softmax(-1) if log else masked.softmax(-1)


__all__ = [
    "sparse_softmax",
    "sparse_softmax_cross_entropy",
    "cosent_loss",
    "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
    "soft_multilabel_categorical_crossentropy",
]
