"""Sparse Softmax (loss and decoding), the copy-span processor, target n-gram blocking and the
summarization model's losses; the processors composed with beam search in generate()."""

from __future__ import annotations

import random
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
from torch.nn import functional as F

import suji_models as S
from suji_models.generation import (
    CopySpanLogitsProcessor,
    SparseSoftmaxLogitsProcessor,
    TargetNoRepeatNGramLogitsProcessor,
)
from suji_models.losses import sparse_softmax, sparse_softmax_cross_entropy
from suji_models.tasks.summarization import (
    TAG_B,
    TAG_I,
    TAG_O,
    SujiForSummarization,
    copy_bio_tags,
    generate_summaries,
)

# ---- Sparse Softmax ---------------------------------------------------------------------------------


def test_sparse_softmax_equals_full_cross_entropy_when_k_is_the_vocabulary():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 50, requires_grad=True)
    labels = torch.randint(0, 50, (4, 7))
    labels[0, :3] = -100
    for k in (50, 80):
        ours = sparse_softmax_cross_entropy(logits, labels, k)
        full = F.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
        torch.testing.assert_close(ours, full)
    (g1,) = torch.autograd.grad(sparse_softmax_cross_entropy(logits, labels, 50), logits)
    (g2,) = torch.autograd.grad(F.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1)), logits)
    torch.testing.assert_close(g1, g2)


def test_sparse_softmax_formula_keeps_the_target():
    torch.manual_seed(1)
    logits = torch.randn(30, 20, requires_grad=True)
    labels = torch.randint(0, 20, (30,))
    k = 4
    loss = sparse_softmax_cross_entropy(logits, labels, k, reduction="none")
    for row in range(30):
        kept = set(logits[row].topk(k).indices.tolist()) | {int(labels[row])}
        expected = torch.logsumexp(logits[row, sorted(kept)], 0) - logits[row, labels[row]]
        torch.testing.assert_close(loss[row], expected)
    # logits outside the kept set get no gradient
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    for row in range(30):
        kept = set(logits[row].topk(k).indices.tolist()) | {int(labels[row])}
        outside = [i for i in range(20) if i not in kept]
        assert torch.all(grad[row, outside] == 0)
    with pytest.raises(ValueError):
        sparse_softmax_cross_entropy(logits, labels, 0)


def test_sparse_softmax_inference_is_renormalized_top_k():
    logits = torch.randn(5, 12)
    probs = sparse_softmax(logits, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    assert ((probs > 0).sum(-1) == 3).all()
    torch.testing.assert_close(sparse_softmax(logits, 12), logits.softmax(-1))
    top = logits.topk(3).indices
    torch.testing.assert_close(probs.gather(-1, top), logits.gather(-1, top).softmax(-1))
    processed = SparseSoftmaxLogitsProcessor(3)(None, logits.log_softmax(-1))
    torch.testing.assert_close(processed.exp(), probs)


# ---- copy processor: property test -----------------------------------------------------------------


def _is_ngram(sequence, source):
    return any(source[i:i + len(sequence)] == sequence for i in range(len(source) - len(sequence) + 1))


def _check_copy_invariant(processor, item, generated, source):
    """Each B...I run of the effective tags is a contiguous n-gram of the source, and every
    B or I token is a source token."""
    tags = processor.effective_tags(item, generated)
    run = []
    for token, tag in zip(generated, tags):
        if tag == TAG_I:
            assert run, "an I with no span before it"
            run.append(token)
        else:
            run = [token] if tag == TAG_B else []
        if tag != TAG_O:
            assert _is_ngram(run, source), (run, source)


def test_copy_processor_never_breaks_the_copied_ngram_greedy_random():
    rng = random.Random(0)
    vocab = 12
    for trial in range(30):
        batch = 3
        sources = [[rng.randint(3, vocab - 1) for _ in range(rng.randint(0, 10))] for _ in range(batch)]
        prompt = torch.zeros(batch, 4, dtype=torch.long)
        tags = {"now": None}
        processor = CopySpanLogitsProcessor(sources, 4, lambda: tags["now"])
        seq = prompt
        for _ in range(12):
            tags["now"] = torch.tensor([rng.choice([TAG_O, TAG_B, TAG_I, TAG_I]) for _ in range(batch)])
            scores = processor(seq, torch.randn(batch, vocab))
            assert torch.isfinite(scores).any(-1).all()
            seq = torch.cat([seq, scores.argmax(-1, keepdim=True)], 1)
        for item in range(batch):
            _check_copy_invariant(processor, item, seq[item, 4:].tolist(), sources[item])
        # the tagger's I is honoured wherever the span can be continued
        for item in range(batch):
            generated = seq[item, 4:].tolist()
            assert len(processor.effective_tags(item, generated)) == len(generated)


def test_copy_processor_masks_exactly_the_continuations():
    source = [5, 6, 7, 5, 6, 8]
    tags = {"now": torch.tensor([TAG_B])}
    processor = CopySpanLogitsProcessor([source], 1, lambda: tags["now"])
    scores = processor(torch.tensor([[0]]), torch.zeros(1, 10))
    assert set(torch.isfinite(scores[0]).nonzero().view(-1).tolist()) == {5, 6, 7, 8}
    tags["now"] = torch.tensor([TAG_I])
    scores = processor(torch.tensor([[0, 5]]), torch.zeros(1, 10))
    assert set(torch.isfinite(scores[0]).nonzero().view(-1).tolist()) == {6}
    scores = processor(torch.tensor([[0, 5, 6]]), torch.zeros(1, 10))
    assert set(torch.isfinite(scores[0]).nonzero().view(-1).tolist()) == {7, 8}
    # O: nothing masked; copy-tag logits are accepted too
    tags["now"] = torch.tensor([[3.0, 0.0, 0.0]])
    assert torch.isfinite(processor(torch.tensor([[0, 5, 6, 8]]), torch.zeros(1, 10))).all()


def test_copy_processor_degrades_when_earlier_processors_ruled_out_its_tokens():
    source = [5, 6, 7, 5, 6, 8]
    tags = {"now": torch.tensor([TAG_I])}
    processor = CopySpanLogitsProcessor([source], 1, lambda: tags["now"])
    processor(torch.tensor([[0]]), torch.zeros(1, 10))  # step 0 given I: no span yet, so it starts one (B)
    scores = torch.zeros(1, 10)
    scores[0, 6] = float("-inf")  # the only continuation of "5" blocked (a top-k or n-gram blocking)
    out = processor(torch.tensor([[0, 5]]), scores)
    assert set(torch.isfinite(out[0]).nonzero().view(-1).tolist()) == {5, 7, 8}  # I -> B: any open source token
    assert processor.effective_tags(0, [5, 7]) == [TAG_B, TAG_B]
    scores = torch.full((1, 10), float("-inf"))
    scores[0, 3] = 0.0  # no source token open at all: B -> O, the one open token stays
    out = processor(torch.tensor([[0, 5, 7]]), scores)
    assert torch.isfinite(out[0]).nonzero().view(-1).tolist() == [3]


def test_summaries_with_copy_and_sparse_softmax_keep_the_copy_invariant():
    model = _tiny_model(copy_head=True)
    with torch.no_grad():  # a tagger that always says "continue copying"
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    tokenizer = SimpleNamespace(cls_token_id=1, sep_token_id=2, pad_token_id=0,
                                decode=lambda ids, skip_special_tokens: " ".join(map(str, ids)))
    seen = []
    original = CopySpanLogitsProcessor.__call__

    def spy(self, input_ids, scores):
        out = original(self, input_ids, scores)
        assert torch.isfinite(out).any(-1).all()  # every row keeps something to choose
        seen.append(self)
        return out

    sources = [[10, 11, 12, 13, 14, 15, 16], [40, 41, 42, 40, 43, 44, 45]]
    with patch.object(CopySpanLogitsProcessor, "__call__", spy), \
            patch("suji_models.tasks.summarization.source_ids", lambda tok, text, n: list(text)[:n]):
        for k in (1, 2):  # a top-k that, applied before the copy mask, would leave rows with nothing to pick
            summaries = generate_summaries(model, tokenizer, sources, max_source_tokens=16, max_new_tokens=8,
                                           num_beams=3, no_repeat_ngram_size=2, copy=True, sparse_softmax_k=k)
            assert all(s for s in summaries)
    processor = seen[-1]
    for item, source in enumerate(sources):
        for generated in {key[1] for key in processor._decided if key[0] == item}:
            _check_copy_invariant(processor, item, list(generated), source)


def _tiny_model(**switches):
    torch.manual_seed(0)
    config = S.SujiConfig.from_preset("roformer-tiny", bos_token_id=1, eos_token_id=2, pad_token_id=0, **switches)
    return SujiForSummarization(config).eval()


def test_copy_processor_composes_with_beam_search_in_generate():
    model = _tiny_model(copy_head=True)
    with torch.no_grad():  # a tagger that always says "continue copying"
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    sources = [[10, 11, 12, 13, 14, 15, 16], [40, 41, 42, 40, 43, 44, 45]]
    prompt = torch.tensor([[1] + s + [2] for s in sources])
    beams = 3
    copy = CopySpanLogitsProcessor(sources, prompt.shape[1], lambda: model.last_copy_logits, num_beams=beams,
                                   eos_token_id=2)
    out = model.generate(prompt, max_new_tokens=10, num_beams=beams, num_return_sequences=beams, do_sample=False,
                         pad_token_id=0, eos_token_id=2, logits_processor=[copy])
    assert out.shape[0] == 2 * beams
    for row in range(out.shape[0]):
        item, generated = row // beams, out[row, prompt.shape[1]:].tolist()
        generated = [t for t in generated if t not in (0, 2)]
        assert generated and all(t in sources[item] for t in generated)
        _check_copy_invariant(copy, item, generated, sources[item])
    free = model.generate(prompt, max_new_tokens=10, num_beams=beams, do_sample=False, pad_token_id=0, eos_token_id=2)
    assert any(t not in sources[0] + sources[1] + [0, 2] for t in free[:, prompt.shape[1]:].reshape(-1).tolist())


# ---- n-gram blocking on the target only ------------------------------------------------------------------


def test_target_ngram_blocking_allows_copying_source_ngrams():
    blocker = TargetNoRepeatNGramLogitsProcessor(2, prompt_length=4)
    assert blocker.banned([7, 8, 9, 7]) == {8}
    assert blocker.banned([7]) == set()
    assert TargetNoRepeatNGramLogitsProcessor(1, 0).banned([3, 4, 3]) == {3, 4}
    ids = torch.tensor([[7, 8, 5, 5, 7]])  # prompt [7, 8, 5, 5], generated [7]: 7 8 repeats the prompt only
    scores = blocker(ids, torch.zeros(1, 10))
    assert torch.isfinite(scores).all()
    model = _tiny_model()
    prompt = torch.tensor([[1, 10, 11, 12, 13, 2]])
    out = model.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=None,
                         logits_processor=[TargetNoRepeatNGramLogitsProcessor(2, prompt.shape[1])])
    generated = out[0, prompt.shape[1]:].tolist()
    bigrams = list(zip(generated, generated[1:]))
    assert len(bigrams) == len(set(bigrams))


# ---- the model's losses ------------------------------------------------------------------------------------


def test_summarization_losses():
    ids = torch.randint(5, 128, (2, 10))
    types = torch.tensor([[0] * 5 + [1] * 5, [0] * 4 + [1] * 5 + [0]])
    mask = torch.tensor([[1] * 10, [1] * 9 + [0]])
    labels = SujiForSummarization.unilm_labels(ids, types, mask)
    plain = _tiny_model()
    reference = S.SujiForUniLM(plain.config)
    reference.load_state_dict(plain.state_dict())
    reference.eval()
    base = reference(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(plain(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels).loss, base)
    sparse = _tiny_model(sparse_softmax_k=128)
    sparse.load_state_dict(plain.state_dict())
    torch.testing.assert_close(sparse(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels).loss, base)
    sparse.config.sparse_softmax_k = 5
    assert sparse(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels).loss < base
    copying = _tiny_model(copy_head=True)
    copying.load_state_dict(plain.state_dict(), strict=False)
    copy_labels = torch.full_like(ids, -100)
    for b in range(2):
        src = ids[b][(types[b] == 0) & mask[b].bool()].tolist()
        tgt_pos = ((types[b] == 1) & mask[b].bool()).nonzero().view(-1)
        copy_labels[b, tgt_pos] = torch.tensor(copy_bio_tags(src, ids[b, tgt_pos].tolist()))
    out = copying(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels, copy_labels=copy_labels)
    expected_copy = F.cross_entropy(out.copy_logits[:, :-1].reshape(-1, 3), copy_labels[:, 1:].reshape(-1),
                                    ignore_index=-100)
    torch.testing.assert_close(out.loss, base + expected_copy)


def test_summarization_model_generates_as_unilm_does():
    model = _tiny_model(copy_head=True)
    reference = S.SujiForUniLM(model.config).eval()
    reference.load_state_dict(model.state_dict(), strict=False)
    prompt = torch.tensor([[1, 10, 11, 12, 13, 2], [1, 20, 21, 22, 23, 2]])
    for beams in (1, 3):
        kwargs = dict(max_new_tokens=6, num_beams=beams, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.equal(model.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))
