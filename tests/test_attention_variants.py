"""Attention variants and mask kinds against naive references written from the formulas."""

import math

import pytest
import torch

import suji_models as S

FAMILIES = ["bert-tiny", "roformer-tiny", "albert-tiny-test", "gpt2-tiny"]
VARIANTS = {"plain": {}, "realformer": dict(residual_attention=True), "entropy": dict(entropy_invariant_scale=True),
            "both": dict(residual_attention=True, entropy_invariant_scale=True)}
L = 10


def mask_inputs(kind):
    """Inputs and the naive allowed[b, i, j] matrix, written out with loops from each definition."""
    batch = 2
    attention_mask = torch.ones(batch, L, dtype=torch.long)
    attention_mask[1, 8:] = 0
    extra, segments, docs = {}, None, None
    if kind == "unilm":
        segments = torch.tensor([[0] * 4 + [1] * 6, [0] * 6 + [1] * 4])
        extra["token_type_ids"] = segments
    elif kind == "prefix":
        extra["prefix_lengths"] = torch.tensor([3, 5])
    elif kind == "packed":
        docs = torch.tensor([[0] * 4 + [1] * 3 + [2] * 3, [0] * 6 + [1] * 4])
        extra["document_ids"] = docs
    allowed = torch.zeros(batch, L, L, dtype=torch.bool)
    for b in range(batch):
        for i in range(L):
            for j in range(L):
                if kind == "causal":
                    ok = j <= i
                elif kind == "unilm":
                    ok = j < 4 + 2 * b if segments[b, i] == 0 else j <= i
                elif kind == "prefix":
                    p = int(extra["prefix_lengths"][b])
                    ok = j < p if i < p else j <= i
                elif kind == "packed":
                    ok = bool(docs[b, i] == docs[b, j])
                else:
                    ok = True
                allowed[b, i, j] = ok and bool(attention_mask[b, j])
        allowed[b] |= ~allowed[b].any(-1, keepdim=True)
    return dict(attention_mask=attention_mask, **extra), allowed


def naive_rotate(x, positions, base=10000.0):
    """RoPE by explicit 2x2 rotations of pairs (2i, 2i+1) by angle pos * base^(-2i/d)."""
    out = x.clone()
    d = x.shape[-1]
    for i in range(d // 2):
        theta = positions.double() * base ** (-2 * i / d)  # [batch, L]
        c, s = theta.cos().float()[:, None, :], theta.sin().float()[:, None, :]
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i], out[..., 2 * i + 1] = a * c - b * s, b * c + a * s
    return out


def naive_forward(model, inputs, allowed, positions):
    """The whole encoder written from the formulas, reusing only the (parity-tested) embeddings."""
    cfg = model.config
    types = inputs.get("token_type_ids", torch.zeros_like(inputs["input_ids"]))
    x = model.embeddings(inputs["input_ids"], types, positions)
    B, h, d = x.shape[0], cfg.num_attention_heads, cfg.head_dim
    n = allowed.sum(-1, keepdim=True).float()[:, None]  # keys each query may see
    prev = None
    for i in range(cfg.num_hidden_layers):
        layer = model.encoder.layer_for(i)
        a = layer.attention
        inp = layer.attention_norm(x) if cfg.norm_placement == "pre" else x
        q, k, v = (lin(inp).view(B, L, h, d).transpose(1, 2) for lin in (a.query, a.key, a.value))
        if cfg.position_embedding_type == "rotary":
            q, k = naive_rotate(q, positions), naive_rotate(k, positions)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        if cfg.entropy_invariant_scale:
            scores = scores * torch.log(n) / math.log(cfg.entropy_base_length)
        if cfg.residual_attention and prev is not None:
            scores = scores + prev
        prev = scores
        probs = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), -1)
        o = a.output((probs @ v).transpose(1, 2).reshape(B, L, -1))
        if cfg.norm_placement == "pre":
            x = x + o
            x = x + layer.ffn(layer.ffn_norm(x))
        else:
            x = layer.attention_norm(x + o)
            x = layer.ffn_norm(x + layer.ffn(x))
    return model.encoder.final_norm(x) if model.encoder.final_norm is not None else x


def naive_positions(kind, inputs):
    if kind == "packed":  # restart at each document
        docs = inputs["document_ids"]
        return torch.stack([torch.tensor([sum(1 for j in range(i) if docs[b, j] == docs[b, i]) for i in range(L)])
                            for b in range(docs.shape[0])])
    return torch.arange(L).expand(2, L)


KINDS = ["bidirectional", "causal", "unilm", "prefix", "packed"]


# GPT2 has no token types to carry UniLM segments: "prefix" is its seq2seq mask.
NAIVE_CASES = [(p, k) for p in ["roformer-tiny", "bert-tiny", "gpt2-tiny"] for k in KINDS
               if not (p == "gpt2-tiny" and k == "unilm")]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("preset,kind", NAIVE_CASES)
def test_variants_match_naive_reference(preset, kind, variant):
    config = S.SujiConfig.from_preset(preset, **VARIANTS[variant])
    model = S.SujiModel(config).eval()
    with torch.no_grad():  # visible LayerNorm and bias values
        for p in model.parameters():
            p.normal_(0, 0.2)
    inputs, allowed = mask_inputs(kind)
    inputs["input_ids"] = torch.randint(1, 128, (2, L))
    mask_kind = {"packed": "bidirectional"}.get(kind, kind)
    with torch.no_grad():
        got = model(**inputs, mask_kind=mask_kind).last_hidden_state
        expected = naive_forward(model, inputs, allowed, naive_positions(kind, inputs))
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["plain", "entropy"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("preset", FAMILIES)
def test_sdpa_equals_eager(preset, kind, variant):
    config = S.SujiConfig.from_preset(preset, **VARIANTS[variant])
    model = S.SujiModel(config).eval()
    inputs, _ = mask_inputs(kind)
    inputs["input_ids"] = torch.randint(1, 128, (2, L))
    if "token_type_ids" in inputs and not config.type_vocab_size:
        inputs["token_type_ids"] = None  # GPT2: the UniLM rule still reads the segments below
        inputs["mask_kind"] = "prefix"
        inputs["prefix_lengths"] = torch.tensor([4, 6])
    inputs.setdefault("mask_kind", {"packed": "bidirectional"}.get(kind, kind))
    outs = {}
    for impl in ("eager", "sdpa"):
        model.config._attn_implementation = impl
        with torch.no_grad():
            outs[impl] = model(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(outs["sdpa"][real], outs["eager"][real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("preset", FAMILIES)
def test_packed_documents_do_not_see_each_other(preset, variant):
    config = S.SujiConfig.from_preset(preset, **VARIANTS[variant])
    model = (S.SujiForCausalLM if config.is_causal else S.SujiForMaskedLM)(config).eval()
    doc_a, doc_b = torch.randint(1, 128, (1, 5)), torch.randint(1, 128, (1, 4))
    docs = torch.tensor([[0] * 5 + [1] * 4])
    with torch.no_grad():
        packed = model(input_ids=torch.cat([doc_a, doc_b], 1), document_ids=docs).logits
        other_b = model(input_ids=torch.cat([doc_a, (doc_b + 7) % 128], 1), document_ids=docs).logits
        alone = model(input_ids=doc_a).logits
    torch.testing.assert_close(other_b[:, :5], packed[:, :5], atol=1e-6, rtol=0)  # B changed, A untouched
    torch.testing.assert_close(packed[:, :5], alone, atol=1e-5, rtol=1e-5)  # A packed == A alone
    assert not torch.allclose(other_b[:, 5:], packed[:, 5:])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("preset", ["bert-tiny", "roformer-tiny", "albert-tiny-test"])
def test_unilm_perturbation_in_every_encoder_family(preset, variant):
    model = S.SujiForUniLM(S.SujiConfig.from_preset(preset, **VARIANTS[variant])).eval()
    ids = torch.randint(5, 128, (1, 10))
    types = torch.tensor([[0] * 5 + [1] * 5])
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 128
    with torch.no_grad():
        base = model(input_ids=ids, token_type_ids=types).logits
        after = model(input_ids=changed, token_type_ids=types).logits
        changed_src = ids.clone()
        changed_src[0, 4] = (ids[0, 4] + 1) % 128  # the last source token is seen by the first one
        src = model(input_ids=changed_src, token_type_ids=types).logits
    torch.testing.assert_close(after[:, :7], base[:, :7], atol=1e-6, rtol=0)
    assert not torch.allclose(src[:, 0], base[:, 0])


def test_prefix_lm_prompt_is_bidirectional_then_causal():
    model = S.SujiForCausalLM(S.SujiConfig.from_preset("gpt2-tiny")).eval()
    ids = torch.randint(5, 128, (1, 8))
    prefix = torch.tensor([4])
    with torch.no_grad():
        base = model(input_ids=ids, prefix_lengths=prefix).logits
        later = ids.clone()
        later[0, 6] = (ids[0, 6] + 1) % 128
        torch.testing.assert_close(model(input_ids=later, prefix_lengths=prefix).logits[:, :6], base[:, :6],
                                   atol=1e-6, rtol=0)
        in_prompt = ids.clone()
        in_prompt[0, 3] = (ids[0, 3] + 1) % 128
        assert not torch.allclose(model(input_ids=in_prompt, prefix_lengths=prefix).logits[:, 0], base[:, 0])
        plain = model(input_ids=ids).logits  # without a prefix: causal, position 0 sees only itself
        assert not torch.allclose(plain[:, 0], base[:, 0])


def test_entropy_scale_clipping_and_value():
    from suji_models.attention import entropy_scale_factor

    mask = torch.tensor([[[[True, False, False], [True, True, False], [True, True, True]]]])
    factor = entropy_scale_factor(mask, 3, 512)
    torch.testing.assert_close(factor.flatten(), torch.tensor([0.0, math.log(2) / math.log(512), math.log(3) / math.log(512)]))
    assert entropy_scale_factor(None, 512, 512).item() == pytest.approx(1.0)  # n = 512: the standard scale


def test_realformer_changes_outputs_and_trains():
    config = S.SujiConfig.from_preset("roformer-tiny", residual_attention=True)
    model = S.SujiForMaskedLM(config)
    plain = S.SujiForMaskedLM(S.SujiConfig.from_preset("roformer-tiny"))
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(1, 128, (2, 12))
    model.eval(), plain.eval()
    assert not torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
