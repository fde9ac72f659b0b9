"""Behaviour of the core that parity alone does not show: ALBERT untying, UniLM, init, presets."""

import math

import pytest
import torch

import suji_models as S
from suji_models.attention import build_attention_mask


def test_untie_layers_keeps_outputs_then_layers_train_independently():
    model = S.SujiForMaskedLM(S.SujiConfig.from_preset("albert-tiny-test")).eval()
    assert len(model.suji.encoder.layers) == 1  # one shared layer run 3 times
    shared_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(1, 128, (2, 10))
    before = model(input_ids=ids).logits

    model.untie_layers()
    layers = model.suji.encoder.layers
    assert len(layers) == 3 and model.config.num_hidden_groups == 3
    assert sum(p.numel() for p in model.parameters()) == shared_params + 2 * sum(p.numel() for p in layers[0].parameters())
    torch.testing.assert_close(model(input_ids=ids).logits, before, atol=0, rtol=0)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    labels = torch.randint(0, 128, (2, 10))
    model(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()
    w = [layer.ffn_in.weight for layer in layers]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert w[0].data_ptr() != w[1].data_ptr()


def test_untied_model_saves_and_reloads_unshared(tmp_path):
    model = S.SujiForMaskedLM(S.SujiConfig.from_preset("albert-tiny-test"))
    model.untie_layers()
    model.save_pretrained(tmp_path)
    reloaded = S.SujiForMaskedLM.from_pretrained(tmp_path)
    assert len(reloaded.suji.encoder.layers) == 3
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)


def test_unilm_mask_from_segments():
    segments = torch.tensor([[0, 0, 0, 1, 1, 1]])
    mask = build_attention_mask("unilm", 6, 6, segment_ids=segments)[0, 0]
    for i in range(6):
        for j in range(6):
            expected = j < 3 if i < 3 else j <= i  # source: whole source; target: source + earlier target
            assert bool(mask[i, j]) == expected, (i, j)


def test_unilm_outputs_respect_the_mask():
    model = S.SujiForUniLM(S.SujiConfig.from_preset("bert-tiny")).eval()
    ids = torch.randint(5, 128, (1, 10))
    types = torch.tensor([[0] * 5 + [1] * 5])
    base = model(input_ids=ids, token_type_ids=types).logits
    changed = ids.clone()
    changed[0, 8] = (ids[0, 8] + 1) % 128  # a later target token
    after = model(input_ids=changed, token_type_ids=types).logits
    torch.testing.assert_close(after[0, :8], base[0, :8], atol=1e-6, rtol=0)
    assert not torch.allclose(after[0, 8:], base[0, 8:])


def test_unilm_loss_scores_only_target_tokens():
    model = S.SujiForUniLM(S.SujiConfig.from_preset("roformer-tiny"))
    ids = torch.randint(5, 128, (2, 8))
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 0]])
    mask = torch.tensor([[1] * 8, [1] * 7 + [0]])
    labels = S.SujiForUniLM.unilm_labels(ids, types, mask)
    assert (labels[0, :4] == -100).all() and (labels[0, 4:] == ids[0, 4:]).all()
    assert labels[1, 7] == -100  # padding is never a target
    out = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 128)
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def unilm_greedy_by_recomputing(model, source, steps, target_segment=1):
    """Greedy decoding without a cache: the whole sequence through the full UniLM mask each step,
    source in segment 0, generated tokens in `target_segment`."""
    seq = source
    with torch.no_grad():
        for _ in range(steps):
            generated = seq.shape[1] - source.shape[1]
            types = torch.cat([torch.zeros_like(source),
                               torch.full((source.shape[0], generated), target_segment, dtype=torch.long)], 1)
            nxt = model(input_ids=seq, token_type_ids=types).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    return seq


def context_sensitive(model, std=0.1):
    """Matrices drawn wider than BERT's init: with std 0.02 a tiny random model's continuation is
    nearly a function of position alone, and a lost cache or segment would go unnoticed."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    return model.eval()


@pytest.mark.upstream
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("preset", ["bert-tiny", "roformer-tiny"])
def test_unilm_generation_equals_recomputing_with_the_full_mask(preset, use_cache):
    model = context_sensitive(S.SujiForUniLM(S.SujiConfig.from_preset(preset, bos_token_id=1, eos_token_id=2)))
    source = torch.randint(5, 128, (2, 6))
    generated = model.generate(source, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0,
                               use_cache=use_cache)
    expected = unilm_greedy_by_recomputing(model, source, 8)
    assert len(set(expected[0, 6:].tolist())) >= 3, f"degenerate continuation {expected[0, 6:].tolist()}"
    # the test can tell: generated tokens in the source segment would give another continuation
    assert not torch.equal(unilm_greedy_by_recomputing(model, source, 8, target_segment=0), expected)
    assert torch.equal(generated, expected)


@pytest.mark.upstream
@pytest.mark.parametrize("head,preset", [(S.SujiForCausalLM, "gpt2-tiny"), (S.SujiForCausalLM, "roformer-tiny"),
                                         (S.SujiForUniLM, "bert-tiny")])
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_kv_cache_under_either_name_equals_the_full_forward(head, preset, name):
    """transformers >= 5.24 hands the cache over as `cache`, earlier 5.x as `past_key_values`: both
    continue a prefix exactly, and the output carries the cache under the installed version's name."""
    model = context_sensitive(head(S.SujiConfig.from_preset(preset)))
    ids = torch.randint(5, 128, (2, 9))
    types = torch.cat([torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)], 1)
    extra = dict(token_type_ids=types) if head is S.SujiForUniLM else {}
    with torch.no_grad():
        full = model(input_ids=ids, **extra).logits
        first = model(input_ids=ids[:, :6], use_cache=True, **{k: v[:, :6] for k, v in extra.items()})
        cache = getattr(first, S.modeling.CACHE_OUTPUT_FIELD)
        assert cache is not None and cache.get_seq_length() == 6
        rest = model(input_ids=ids[:, 6:], use_cache=True, logits_to_keep=1, **{name: cache},
                     **{k: v[:, 6:] for k, v in extra.items()})
    assert getattr(rest, S.modeling.CACHE_OUTPUT_FIELD).get_seq_length() == 9
    assert rest.logits.shape[1] == 1
    torch.testing.assert_close(rest.logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_a_cache_under_an_unknown_name_is_an_error():
    from transformers.cache_utils import DynamicCache

    model = S.SujiForCausalLM(S.SujiConfig.from_preset("gpt2-tiny")).eval()
    with pytest.raises(TypeError, match="`kv_cache`"):
        model(input_ids=torch.tensor([[5, 6]]), kv_cache=DynamicCache(config=model.config))


def test_causal_lm_padding_does_not_change_real_tokens():
    model = S.SujiForCausalLM(S.SujiConfig.from_preset("gpt2-tiny")).eval()
    ids = torch.randint(5, 128, (1, 6))
    alone = model(input_ids=ids).logits
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    torch.testing.assert_close(model(input_ids=padded, attention_mask=mask).logits[:, :6], alone, atol=1e-5, rtol=0)


def test_initialization_is_truncated_normal():
    config = S.SujiConfig.from_preset("bert-base", num_hidden_layers=1)
    model = S.SujiForMaskedLM(config)
    std = config.initializer_range
    w = model.suji.encoder.layers[0].ffn_in.weight
    assert w.abs().max() <= 2 * std + 1e-7
    # a normal truncated at +-2 std has std 0.8796 * std
    assert math.isclose(w.std().item(), 0.8796 * std, rel_tol=0.02)
    assert torch.all(model.suji.encoder.layers[0].ffn_in.bias == 0)
    assert torch.all(model.suji.embeddings.norm.weight == 1)
    assert torch.all(model.lm_head.bias == 0)
    assert model.lm_head.decoder.weight is model.suji.embeddings.word_embeddings.weight


def test_cpm_preset_on_meta_device():
    config = S.SujiConfig.from_preset("cpm-lm-2.6b")
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.vocab_size,
            config.max_position_embeddings) == (32, 2560, 32, 30000, 1024)
    with torch.device("meta"):
        model = S.SujiForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert 2.5e9 < n < 2.7e9
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", sorted(S.PRESETS))
def test_every_preset_builds_a_valid_config(name):
    config = S.SujiConfig.from_preset(name)
    assert config.hidden_size % config.num_attention_heads == 0
    assert config.family in ("bert", "roformer", "albert", "gpt2")


def test_config_errors_are_clear():
    with pytest.raises(KeyError, match="unknown preset 'bert-huge'; known presets: .*roformer-base"):
        S.SujiConfig.from_preset("bert-huge")
    with pytest.raises(ValueError, match="divisible"):
        S.SujiConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_hidden_groups"):
        S.SujiConfig(num_hidden_layers=4, num_hidden_groups=3)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        S.SujiModel(S.SujiConfig.from_preset("bert-tiny"))(input_ids=torch.ones(1, 200, dtype=torch.long))


def test_gradient_checkpointing_gives_same_gradients():
    config = S.SujiConfig.from_preset("roformer-tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = S.SujiForMaskedLM(config).train()
    ids = torch.randint(1, 128, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model(input_ids=ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_masked_only_lm_head_gives_the_same_loss():
    model = S.SujiForMaskedLM(S.SujiConfig.from_preset("bert-tiny")).eval()
    ids = torch.randint(5, 128, (2, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 7], labels[1, 9] = 11, 12, 13
    full = model(input_ids=ids, labels=labels)
    sparse = model(input_ids=ids, labels=labels, masked_logits_only=True)
    assert sparse.logits.shape == (3, 128)
    torch.testing.assert_close(sparse.loss, full.loss)
    torch.testing.assert_close(sparse.logits, full.logits[labels != -100])


def test_masked_only_lm_head_runs_on_a_few_row_counts_with_the_full_heads_loss_and_gradients():
    """The masked-only head's row count is rounded up (`masked_head_rows`), so the [rows, vocab] buffers take a
    few sizes instead of a new one each step (a new size each step fragments glibc's heap: RSS grew by 67% over
    2,000 CPU steps); the padding rows change neither the loss nor any gradient."""
    from suji_models.modeling import masked_head_rows

    assert [masked_head_rows(n) for n in (1, 64, 65, 600, 614, 2458, 2600)] == [64, 64, 128, 640, 640, 2560, 2816]
    assert all(n <= masked_head_rows(n) <= max(n + 63, n * 9 // 8) for n in range(1, 5000))

    model = S.SujiForMaskedLM(S.SujiConfig.from_preset("bert-tiny")).eval()  # no dropout: comparable runs
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    for predicted in (1, 64, 69):
        ids = torch.randint(5, 128, (4, 40))
        labels = torch.full_like(ids, -100)
        labels.view(-1)[torch.randperm(ids.numel())[:predicted]] = ids.view(-1)[:predicted]
        grads = []
        for sparse in (False, True):
            model.zero_grad()
            out = model(input_ids=ids, labels=labels, masked_logits_only=sparse)
            out.loss.backward()
            grads.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()], out.logits.detach()))
        (full_loss, full_grads, full_logits), (loss, sparse_grads, logits) = grads
        assert seen[-1] == masked_head_rows(predicted)
        assert logits.shape == (predicted, full_logits.shape[-1])
        torch.testing.assert_close(logits, full_logits[labels != -100])
        torch.testing.assert_close(loss, full_loss)
        for a, b in zip(sparse_grads, full_grads):
            torch.testing.assert_close(a, b)


def test_positions_beyond_the_learned_table_are_a_clear_error():
    model = S.SujiModel(S.SujiConfig.from_preset("bert-tiny", max_position_embeddings=16)).eval()
    with torch.no_grad():
        model(torch.randint(5, 100, (1, 16)))  # the last position, 15, fits
        with pytest.raises(ValueError, match="position 19 is beyond max_position_embeddings=16"):
            model(torch.randint(5, 100, (1, 20)))
        with pytest.raises(ValueError, match="position 30 is beyond"):  # positions given by the caller
            model(torch.randint(5, 100, (1, 4)), position_ids=torch.tensor([[0, 1, 2, 30]]))
        cache = model(torch.randint(5, 100, (1, 14)), use_cache=True)[S.modeling.CACHE_OUTPUT_FIELD]
        with pytest.raises(ValueError, match="position 16 is beyond"):  # 14 cached + 3 new
            model(torch.randint(5, 100, (1, 3)), use_cache=True, **{S.modeling.CACHE_OUTPUT_FIELD: cache})
