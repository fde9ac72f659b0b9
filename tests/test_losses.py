"""ZLPR (multilabel categorical cross-entropy) and its sparse and soft-label forms against their formulas."""

import math

import torch

from suji_models.losses import (
    multilabel_categorical_crossentropy,
    soft_multilabel_categorical_crossentropy,
    sparse_multilabel_categorical_crossentropy,
)


def formula(y_true, y_pred):
    """log(1 + sum_neg e^s) + log(1 + sum_pos e^-s), one row at a time, in float64 Python."""
    out = []
    for labels, scores in zip(y_true.tolist(), y_pred.tolist()):
        neg = sum(math.exp(s) for y, s in zip(labels, scores) if not y)
        pos = sum(math.exp(-s) for y, s in zip(labels, scores) if y)
        out.append(math.log1p(neg) + math.log1p(pos))
    return torch.tensor(out)


def random_case(rows=16, classes=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, classes, generator=gen) * 3
    labels = (torch.rand(rows, classes, generator=gen) < 0.3).long()
    labels[0] = 0  # a row without positives
    labels[1] = 1  # a row without negatives
    return labels, scores


def test_dense_matches_formula():
    labels, scores = random_case()
    torch.testing.assert_close(multilabel_categorical_crossentropy(labels, scores), formula(labels, scores),
                               atol=1e-5, rtol=1e-5)


def test_dense_is_stable_for_huge_scores_and_ignores_masked_candidates():
    labels = torch.tensor([[1, 0, 0, 0]])
    scores = torch.tensor([[200.0, -200.0, -1e12, -1e12]])  # confident and right; two masked candidates
    loss = multilabel_categorical_crossentropy(labels, scores)
    assert torch.isfinite(loss).all() and loss.item() < 1e-6
    wrong = multilabel_categorical_crossentropy(labels, torch.tensor([[-50.0, 50.0, -1e12, -1e12]]))
    assert abs(wrong.item() - 100.0) < 1e-3  # log(1 + e^50) + log(1 + e^50) ~ 100


def test_sparse_equals_dense_on_the_same_positives():
    labels, scores = random_case(seed=1)
    most = int(labels.sum(-1).max())
    index = torch.full((labels.shape[0], most + 2), -1, dtype=torch.long)  # extra padding on purpose
    for r, row in enumerate(labels):
        pos = row.nonzero().flatten()
        index[r, : len(pos)] = pos
    sparse = sparse_multilabel_categorical_crossentropy(index, scores)
    torch.testing.assert_close(sparse, formula(labels, scores), atol=1e-4, rtol=1e-4)


def test_sparse_gradient_equals_dense_gradient():
    labels, scores = random_case(rows=4, classes=6, seed=2)
    a = scores.clone().requires_grad_()
    b = scores.clone().requires_grad_()
    multilabel_categorical_crossentropy(labels, a).sum().backward()
    index = torch.full((4, 6), -1, dtype=torch.long)
    for r, row in enumerate(labels):
        pos = row.nonzero().flatten()
        index[r, : len(pos)] = pos
    sparse_multilabel_categorical_crossentropy(index, b).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-3)


def test_soft_reduces_to_dense_on_hard_labels_and_matches_its_formula():
    labels, scores = random_case(seed=3)
    torch.testing.assert_close(soft_multilabel_categorical_crossentropy(labels.float(), scores),
                               multilabel_categorical_crossentropy(labels, scores), atol=1e-5, rtol=1e-5)
    gen = torch.Generator().manual_seed(4)
    t = torch.rand(5, 7, generator=gen)
    s = torch.randn(5, 7, generator=gen)
    expected = torch.log1p((t * torch.exp(-s)).sum(-1)) + torch.log1p(((1 - t) * torch.exp(s)).sum(-1))
    torch.testing.assert_close(soft_multilabel_categorical_crossentropy(t, s), expected, atol=1e-5, rtol=1e-5)


def test_soft_minimum_is_at_half_logit_of_the_targets():
    t = torch.tensor([[0.9, 0.2, 0.5, 0.05]])
    optimum = (0.5 * torch.log(t / (1 - t))).requires_grad_()
    soft_multilabel_categorical_crossentropy(t, optimum).sum().backward()
    assert optimum.grad.abs().max().item() < 1e-6
