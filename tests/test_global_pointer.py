"""GlobalPointer / Efficient GlobalPointer scores against a naive loop-by-loop reference."""

import math

import torch

from suji_models.layers import INVALID_SCORE, EfficientGlobalPointer, GlobalPointer, decode_spans


def rope_matrix(position: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The block-diagonal rotation R_position: pairs (2i, 2i+1) rotate by position * base^(-2i/dim)."""
    r = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(dim // 2):
        angle = position * base ** (-2 * i / dim)
        c, s = math.cos(angle), math.sin(angle)
        r[2 * i, 2 * i], r[2 * i, 2 * i + 1] = c, -s
        r[2 * i + 1, 2 * i], r[2 * i + 1, 2 * i + 1] = s, c
    return r


def check_masking(scores, mask):
    batch, types, length, _ = scores.shape
    for b in range(batch):
        for i in range(length):
            for j in range(length):
                valid = j >= i and mask[b, i] and mask[b, j]
                if not valid:
                    assert (scores[b, :, i, j] == INVALID_SCORE).all()


def test_global_pointer_matches_naive_reference():
    torch.manual_seed(0)
    hidden_size, types, head, length = 12, 3, 8, 6
    layer = GlobalPointer(hidden_size, types, head).double()
    h = torch.randn(2, length, hidden_size, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    scores = layer(h, mask).double()
    W, bias = layer.dense.weight, layer.dense.bias
    for b in range(2):
        for a in range(types):
            # the layer's output features are [type][q|k][head]
            rows_q = slice((2 * a) * head, (2 * a + 1) * head)
            rows_k = slice((2 * a + 1) * head, (2 * a + 2) * head)
            for i in range(length):
                for j in range(i, length):
                    if not (mask[b, i] and mask[b, j]):
                        continue
                    q = rope_matrix(i, head) @ (W[rows_q] @ h[b, i] + bias[rows_q])
                    k = rope_matrix(j, head) @ (W[rows_k] @ h[b, j] + bias[rows_k])
                    expected = (q @ k) / math.sqrt(head)
                    assert abs(scores[b, a, i, j].item() - expected.item()) < 1e-9
    check_masking(scores, mask)


def test_rope_makes_the_score_depend_on_relative_position_only():
    torch.manual_seed(1)
    layer = GlobalPointer(8, 1, 4).double()
    same = torch.randn(1, 1, 8, dtype=torch.float64).expand(1, 7, 8)  # one token state repeated
    scores = layer(same)[0, 0]
    for d in range(4):  # every span of the same width gets the same score
        diagonal = torch.diagonal(scores, offset=d)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-10)


def test_efficient_global_pointer_matches_naive_reference():
    torch.manual_seed(2)
    hidden_size, types, head, length = 10, 4, 6, 5
    layer = EfficientGlobalPointer(hidden_size, types, head).double()
    h = torch.randn(2, length, hidden_size, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])  # e.g. [CLS] and padding masked
    scores = layer(h, mask).double()
    for b in range(2):
        u = [layer.dense(h[b, t]) for t in range(length)]  # shared [q; k]
        terms = [layer.type_dense(u[t]) for t in range(length)]  # per type: (start, end)
        for a in range(types):
            for i in range(length):
                for j in range(i, length):
                    if not (mask[b, i] and mask[b, j]):
                        continue
                    q = rope_matrix(i, head) @ u[i][:head]
                    k = rope_matrix(j, head) @ u[j][head:]
                    expected = q @ k / math.sqrt(head) + (terms[i][2 * a] + terms[j][2 * a + 1]) / 2
                    assert abs(scores[b, a, i, j].item() - expected.item()) < 1e-9
    check_masking(scores, mask)


def test_efficient_global_pointer_has_fewer_parameters():
    gp = sum(p.numel() for p in GlobalPointer(768, 10, 64).parameters())
    egp = sum(p.numel() for p in EfficientGlobalPointer(768, 10, 64).parameters())
    assert egp * 9 < gp  # 10 types: one shared projection instead of ten


def test_decode_spans_reads_positive_scores():
    scores = torch.full((2, 2, 4, 4), -5.0)
    scores[0, 1, 0, 2] = 3.0
    scores[0, 0, 1, 1] = 0.5
    scores[0, 0, 0, 2] = 1.0  # nested / overlapping spans of another type are fine
    scores[1, 0, 2, 3] = -0.1
    assert decode_spans(scores) == [[(0, 2, 0), (0, 2, 1), (1, 1, 0)], []]
