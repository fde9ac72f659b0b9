"""Reading comprehension decoding: the span decoder against brute force, the passage-substring
constraint (property test on random passages, and inside transformers' generate()), the passage vote,
MLM slot decoding and answer voting."""

import random

import pytest
import torch

from suji_models.generation import PassageSubstringLogitsProcessor, PassageVoteLogitsProcessor
from suji_models.tasks.mrc import (
    best_spans, decode_mlm_slots, passage_continuations, token_span_of_chars, vote_answers,
)

EOS = 1


def _is_piece(answer, passage) -> bool:
    k = len(answer)
    return k == 0 or any(list(passage[i:i + k]) == list(answer) for i in range(len(passage) - k + 1))


# ---- span decoder --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_best_span_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    batch, length = 3, random.Random(seed).randint(1, 24)
    start, end = torch.randn(batch, length, generator=g), torch.randn(batch, length, generator=g)
    allowed = torch.rand(batch, length, generator=g) > 0.3
    max_len = random.Random(seed).randint(1, 8)
    for b, (i, j, score) in enumerate(best_spans(start, end, allowed, max_len)):
        best = (None, None, float("-inf"))
        for s in range(length):
            for e in range(s, min(length, s + max_len)):
                if allowed[b, s] and allowed[b, e] and start[b, s] + end[b, e] > best[2]:
                    best = (s, e, float(start[b, s] + end[b, e]))
        assert (i, j) == best[:2]
        assert score == pytest.approx(best[2]) if i is not None else score == float("-inf")


def test_token_span_of_chars_covers_partial_tokens():
    offsets = [(0, 0), (0, 4), (4, 5), (5, 7), (0, 0)]   # [CLS] 2010 年 10月 [SEP]
    assert token_span_of_chars(offsets, 4, 5) == (2, 2)
    assert token_span_of_chars(offsets, 2, 6) == (1, 3)  # starts inside '2010', ends inside '10月'
    assert token_span_of_chars(offsets, 7, 9) is None


# ---- the passage-substring constraint ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_substring_processor_allows_exactly_the_passage_continuations(seed):
    rng = random.Random(seed)
    vocab = rng.randint(3, 9)                     # small vocabularies: tokens repeat in the passage
    passages = [[rng.randint(2, vocab + 1) for _ in range(rng.randint(1, 30))] for _ in range(2)]
    prompt = 3
    processor = PassageSubstringLogitsProcessor(passages, prompt_length=prompt, eos_token_id=EOS, num_beams=2)
    # random walks: sample from the processed scores; every prefix must stay a piece of its passage
    for _ in range(10):
        ids = torch.full((4, prompt), 7)
        done = [False] * 4
        for _ in range(12):
            scores = processor(ids, torch.randn(4, vocab + 2))
            for row in range(4):
                passage = passages[row // 2]
                answer = [t for t in ids[row, prompt:].tolist()]
                if done[row]:
                    continue
                brute = {passage[i + len(answer)] for i in range(len(passage) - len(answer))
                         if passage[i:i + len(answer)] == answer} | {EOS}
                assert set(torch.isfinite(scores[row]).nonzero().view(-1).tolist()) == brute
            nxt = torch.distributions.Categorical(logits=scores).sample()
            ids = torch.cat([ids, nxt[:, None]], 1)
            for row in range(4):
                answer = ids[row, prompt:].tolist()
                if EOS in answer:
                    done[row] = True
                    answer = answer[:answer.index(EOS)]
                assert _is_piece(answer, passages[row // 2])


def test_substring_processor_empty_answer_switch_and_log_probs():
    processor = PassageSubstringLogitsProcessor([[5, 6]], prompt_length=1, eos_token_id=EOS, allow_empty=False)
    logits = torch.randn(1, 8)
    out = processor(torch.tensor([[0]]), logits)
    assert set(torch.isfinite(out[0]).nonzero().view(-1).tolist()) == {5, 6}
    torch.testing.assert_close(out[0, 5:7], logits.log_softmax(-1)[0, 5:7])   # log-probs, not renormalized
    after = processor(torch.tensor([[0, 6]]), logits)
    assert set(torch.isfinite(after[0]).nonzero().view(-1).tolist()) == {EOS}  # 6 ends the passage


def test_passage_continuations_brute_force():
    rng = random.Random(1)
    for _ in range(200):
        passage = [rng.randint(0, 3) for _ in range(rng.randint(0, 12))]
        prefix = [rng.randint(0, 3) for _ in range(rng.randint(0, 3))]
        processor = PassageSubstringLogitsProcessor([passage], 0, eos_token_id=99)
        assert passage_continuations(passage, prefix) | {99} == processor.allowed(0, prefix) | (
            set() if prefix else {99})


# ---- the vote ------------------------------------------------------------------------------------


def test_vote_averages_a_groups_passages_and_drops_those_without_answer():
    vocab = 6
    log_probs = torch.randn(4, vocab).log_softmax(-1)
    log_probs[2] = torch.tensor([0.0, 5.0, 0, 0, 0, 0]).log_softmax(-1)   # item 2 says "no answer" (EOS first)
    voter = PassageVoteLogitsProcessor([0, 0, 0, 1], prompt_length=2, eos_token_id=EOS)
    out = voter(torch.zeros(4, 2, dtype=torch.long), log_probs.clone())
    mean = (log_probs[0].exp() + log_probs[1].exp()) / 2
    for row in (0, 1, 2):
        torch.testing.assert_close(out[row].exp(), mean)
    torch.testing.assert_close(out[3], log_probs[3])
    later = voter(torch.zeros(4, 3, dtype=torch.long), log_probs.clone())   # item 2 stays silent
    torch.testing.assert_close(later[0].exp(), mean)
    squared = PassageVoteLogitsProcessor([0, 0, 0, 1], 2, EOS, how="squared")
    p = log_probs[:2].exp()
    torch.testing.assert_close(squared(torch.zeros(4, 2, dtype=torch.long), log_probs.clone())[0].exp(),
                               (p * p).sum(0) / (p.sum(0) + 1))


def test_vote_when_every_passage_says_no_answer():
    log_probs = torch.tensor([[0.0, 9.0, 0, 0], [0.0, 8.0, 1, 0]]).log_softmax(-1)
    out = PassageVoteLogitsProcessor([3, 3], 5, EOS)(torch.zeros(2, 5, dtype=torch.long), log_probs)
    assert out.argmax(-1).tolist() == [EOS, EOS] and torch.isinf(out[:, 0]).all()


def test_generate_keeps_answers_inside_the_passage():
    """Inside transformers' generate() (beam search and greedy), with several passages voting: the
    answer of a random model is still a piece of one of its question's passages."""
    import suji_models as S

    config = S.SujiConfig.from_preset("roformer-small", vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, embedding_size=32)
    torch.manual_seed(0)
    model = S.SujiForUniLM(config).eval()
    rng = random.Random(0)
    passages = [[rng.randint(5, 12) for _ in range(rng.randint(4, 10))] for _ in range(4)]
    prompts = [[2] + p + [3, 20, 21, 3] for p in passages]      # [CLS] passage [SEP] question [SEP]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])   # left padding (rotary: relative)
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    groups = [0, 0, 1, 1]
    for beams in (1, 3):
        processors = [PassageSubstringLogitsProcessor(passages, width, 3, beams),
                      PassageVoteLogitsProcessor(groups, width, 3, beams)]
        out = model.generate(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                             logits_processor=processors, num_beams=beams, max_new_tokens=6, do_sample=False,
                             eos_token_id=3, pad_token_id=0, use_cache=False)
        answers = [row[width:].tolist() for row in out]
        answers = [a[:a.index(3)] if 3 in a else a for a in answers]
        for b, answer in enumerate(answers):
            assert any(_is_piece(answer, passages[c]) for c in range(4) if groups[c] == groups[b])
        assert answers[0] == answers[1] and answers[2] == answers[3]   # a group answers once


# ---- MLM slots and answer voting ------------------------------------------------------------------


def test_mlm_slots_decode_padding_to_nothing():
    pad, sep, vocab = 0, 3, 10
    passage = [5, 6, 7, 5, 8]
    slots = torch.full((4, vocab), -20.0)
    slots[:, pad] = 0.0                            # every slot predicts [PAD]: no answer
    assert decode_mlm_slots(slots.log_softmax(-1), passage, [pad, sep])[0] == ()
    slots[0, 5], slots[1, 6] = 5.0, 5.0            # "5 6" then padding
    answer, score = decode_mlm_slots(slots.log_softmax(-1), passage, [pad, sep])
    assert answer == (5, 6)
    p = slots.log_softmax(-1).exp()
    assert score == pytest.approx(float(p[0, 5] + p[1, 6] + p[2, pad]) / 3)


def test_mlm_slots_stay_inside_the_passage():
    rng = random.Random(3)
    for _ in range(100):
        passage = [rng.randint(4, 9) for _ in range(rng.randint(1, 12))]
        slots = torch.randn(6, 10).log_softmax(-1)
        answer, _ = decode_mlm_slots(slots, passage, [0])
        assert _is_piece(answer, passage)


def test_vote_answers_rules():
    candidates = [("北京", 0.9), ("北京", 0.8), ("上海", 0.95), ("", 0.99)]
    best, score = vote_answers(candidates)
    assert best == "北京" and score == pytest.approx((0.81 + 0.64) / (1.7 + 1))
    assert vote_answers(candidates, how="max") == ("上海", 0.95)
    assert vote_answers([("", 0.9)]) == ("", 0.0)
