"""Linear-chain CRF: log-likelihood and Viterbi against brute-force enumeration of every path."""

import itertools

import pytest
import torch

from suji_models.layers import CRF


def brute_force(crf, emissions, length):
    """(log Z, best path, {path: score}) over all num_tags ** length paths of one sequence."""
    scores = {}
    for path in itertools.product(range(crf.num_tags), repeat=length):
        s = crf.start_transitions[path[0]] + crf.end_transitions[path[-1]]
        s = s + sum(emissions[t, y] for t, y in enumerate(path))
        s = s + sum(crf.transitions[a, b] for a, b in zip(path, path[1:]))
        scores[path] = s.item()
    values = torch.tensor(list(scores.values()), dtype=torch.float64)
    best = max(scores, key=scores.get)
    return torch.logsumexp(values, 0).item(), list(best), scores


def make_crf(num_tags, seed, multiplier=1.0):
    torch.manual_seed(seed)
    crf = CRF(num_tags, lr_multiplier=multiplier)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn_like(p) / multiplier)
    return crf


@pytest.mark.parametrize("num_tags,seed", [(2, 0), (3, 1), (4, 2), (5, 3)])
def test_log_partition_path_score_and_viterbi_equal_brute_force(num_tags, seed):
    crf = make_crf(num_tags, seed, multiplier=10.0)
    lengths = [4, 1, 3, 2]
    emissions = torch.randn(len(lengths), max(lengths), num_tags) * 2
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    log_z = crf.log_partition(emissions, mask)
    paths = crf.decode(emissions, mask)
    for b, n in enumerate(lengths):
        expected_z, best, scores = brute_force(crf, emissions[b], n)
        assert log_z[b].item() == pytest.approx(expected_z, abs=1e-4)
        assert paths[b] == best
        tags = torch.tensor([best + [0] * (max(lengths) - n)])
        got = crf.path_score(emissions[b:b + 1], tags, mask[b:b + 1]).item()
        assert got == pytest.approx(scores[tuple(best)], abs=1e-4)
        nll = crf.neg_log_likelihood(emissions[b:b + 1], tags, mask[b:b + 1]).item()
        assert nll == pytest.approx(expected_z - scores[tuple(best)], abs=1e-4)


def test_training_the_crf_alone_learns_a_transition_rule():
    """Tags follow 0 -> 1 -> 0 -> 1 ...; emissions carry no information, so only transitions can learn it."""
    crf = CRF(2, lr_multiplier=10.0)
    opt = torch.optim.Adam(crf.parameters(), lr=0.05)
    emissions = torch.zeros(8, 6, 2)
    tags = torch.tensor([[(t + (b % 2)) % 2 for t in range(6)] for b in range(8)])
    for _ in range(100):
        opt.zero_grad()
        crf.neg_log_likelihood(emissions, tags).mean().backward()
        opt.step()
    # the first tag is a coin flip, the rest follows deterministically
    assert crf.neg_log_likelihood(emissions, tags).mean().item() < 0.8
    path = crf.decode(emissions)[0]
    assert all(a != b for a, b in zip(path, path[1:]))


def test_first_position_must_be_unmasked():
    crf = CRF(3)
    with pytest.raises(ValueError, match="first position"):
        crf.log_partition(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 1]]))
