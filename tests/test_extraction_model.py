"""GPLinker heads and model: link pointers against GlobalPointer, the loss against dense ZLPR, save / load,
and a tiny model that learns a few sentences and decodes their triples / events back."""

import pytest
import torch

import suji_models as S
from suji_models.layers import EfficientGlobalPointer, GlobalPointer
from suji_models.layers.gplinker import HEADS, EfficientLinkPointer, GlobalLinkPointer, GPLinkerHead
from suji_models.layers.global_pointer import INVALID_SCORE
from suji_models.losses import multilabel_categorical_crossentropy
from suji_models.tasks.extraction import (
    EVENT_LINK_TYPES,
    RELATION_ENTITY_TYPES,
    TRIGGER,
    Event,
    EventExample,
    RelationExample,
    SujiForGPLinker,
    collate,
    decode_relations,
    encode_events,
    encode_relations,
    gplinker_loss,
    read_event_schema,
    read_relation_schema,
    set_gplinker_config,
    spo_from_triples,
    spo_key,
)
from tokenization import load_tokenizer

from .conftest import SHARED


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(SHARED / "models" / "suji-roformer-small-zh"))


@pytest.fixture(scope="module")
def relation_schema(shared_data):
    return read_relation_schema(shared_data / "extraction" / "duie2.0_subset" / "duie_schema.json")


@pytest.fixture(scope="module")
def event_schema(shared_data):
    return read_event_schema(shared_data / "extraction" / "duee1.0" / "duee_event_schema.json")


@pytest.mark.parametrize("link_cls, pointer_cls", [(GlobalLinkPointer, GlobalPointer),
                                                   (EfficientLinkPointer, EfficientGlobalPointer)])
def test_link_pointer_scores_every_ordered_pair_as_global_pointer_does(link_cls, pointer_cls):
    torch.manual_seed(0)
    link = link_cls(16, 3, head_size=8)
    pointer = pointer_cls(16, 3, head_size=8, rope=False)
    pointer.load_state_dict(link.state_dict())  # the same parameters
    hidden = torch.randn(2, 5, 16)
    scores = link(hidden)
    upper = torch.ones(5, 5, dtype=torch.bool).triu()
    torch.testing.assert_close(scores[..., upper], pointer(hidden)[..., upper])
    # a pair below the diagonal: what GlobalPointer gives when the two tokens come in the other order
    for i, j in [(3, 1), (4, 0), (2, 1)]:
        swapped = torch.stack([hidden[:, i], hidden[:, j]], dim=1)
        torch.testing.assert_close(scores[:, :, i, j], pointer(swapped)[:, :, 0, 1])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    masked = link(hidden, mask)
    allowed = mask.bool()[:, None, :, None] & mask.bool()[:, None, None, :]
    assert (masked[~allowed.expand_as(masked)] == INVALID_SCORE).all()
    torch.testing.assert_close(masked[allowed.expand_as(masked)], scores[allowed.expand_as(scores)])


@pytest.mark.parametrize("head", HEADS)
def test_head_shapes_and_entity_triangle(head):
    torch.manual_seed(0)
    module = GPLinkerHead(16, 2, 4, head, head_size=8)
    entity, heads, tails = module(torch.randn(2, 6, 16), torch.tensor([[0, 1, 1, 1, 0, 0]] * 2))
    assert entity.shape == (2, 2, 6, 6) and heads.shape == tails.shape == (2, 4, 6, 6)
    assert (entity[:, :, 3, 2] == INVALID_SCORE).all()  # entities: start <= end
    assert (heads[:, :, 3, 2] > INVALID_SCORE).all()  # links: any order
    assert (heads[:, :, 0, 2] == INVALID_SCORE).all()  # never to [CLS]
    with pytest.raises(ValueError, match="head must be one of"):
        GPLinkerHead(16, 2, 4, "crf")
    undirected = GPLinkerHead(16, 2, 1, head, head_size=8, triangular_links=True)
    _, heads, tails = undirected(torch.randn(2, 6, 16), torch.tensor([[0, 1, 1, 1, 0, 0]] * 2))
    assert (heads[:, :, 3, 2] == INVALID_SCORE).all() and (heads[:, :, 2, 3] > INVALID_SCORE).all()


def test_loss_is_dense_zlpr_summed_over_types_and_averaged_over_the_batch():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 4, 4)
    positives = [(0, 0, 1, 2), (0, 2, 0, 0), (0, 2, 3, 1), (1, 1, 2, 2)]
    dense = torch.zeros_like(scores)
    sparse = torch.full((2, 3, 2), -1)
    fill = {}
    for b, t, i, j in positives:
        dense[b, t, i, j] = 1
        k = fill.get((b, t), 0)
        sparse[b, t, k] = i * 4 + j
        fill[b, t] = k + 1
    expected = multilabel_categorical_crossentropy(dense.view(2, 3, -1), scores.view(2, 3, -1)).sum(1).mean()
    torch.testing.assert_close(gplinker_loss(scores, sparse), expected)


def tiny(head, entity_types, link_types, vocab_size, seed=0, triangular_links=False):
    torch.manual_seed(seed)
    config = S.SujiConfig.from_preset("roformer-tiny", vocab_size=vocab_size, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
    return SujiForGPLinker(set_gplinker_config(config, head, entity_types, link_types, head_size=8,
                                               triangular_links=triangular_links))


RELATION_EXAMPLES = [
    RelationExample("《功夫》的导演和主演都是周星驰", [
        {"subject": "功夫", "predicate": "导演", "object": {"@value": "周星驰"}},
        {"subject": "功夫", "predicate": "主演", "object": {"@value": "周星驰"}}]),
    RelationExample("张智尧在《楚留香新传》里饰演楚留香", [
        {"subject": "张智尧", "predicate": "饰演", "object": {"@value": "楚留香", "inWork": "楚留香新传"}},
        {"subject": "楚留香新传", "predicate": "主演", "object": {"@value": "张智尧"}}]),
]


def train_steps(model, batch, steps, lr=3e-3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.mark.slow  # minutes on a 2-core machine; CI runs it with -m slow
def test_tiny_model_learns_overlapping_and_complex_triples(tokenizer, relation_schema, tmp_path):
    rows = encode_relations(tokenizer, RELATION_EXAMPLES, relation_schema, 64)
    batch = collate([r.as_row() for r in rows], tokenizer.pad_token_id, 2, len(relation_schema.links))
    model = tiny("global_pointer", RELATION_ENTITY_TYPES, relation_schema.link_names, len(tokenizer))
    model, losses = train_steps(model, batch, 150)
    assert losses[-1] < losses[0] / 20
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if not k.endswith("_labels")})
    for b, (ex, row) in enumerate(zip(RELATION_EXAMPLES, rows)):
        triples = decode_relations(out.entity_logits[b], out.head_logits[b], out.tail_logits[b], row.offsets)
        found = spo_from_triples(ex.text, triples, relation_schema)
        assert sorted(map(spo_key, found)) == sorted(map(spo_key, ex.spo_list))
    model.save_pretrained(tmp_path)
    again = SujiForGPLinker.from_pretrained(tmp_path).eval()
    assert again.config.gplinker_link_types == relation_schema.link_names
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).loss, model(**batch).loss)


@pytest.mark.parametrize("head", HEADS)
def test_each_pointer_learns_with_either_head(head, tokenizer, event_schema):
    """Events of one type in one sentence: the argument, head-link and tail-link losses all fall (the links
    slowest: they need the encoder to tell apart tokens in similar contexts). Decoding
    the events back needs a few hundred steps of this tiny model; decoding itself is tested on exact scores."""
    text = "中国队击败丹麦队，日本人负于韩国"
    kind = "竞赛行为-胜负"
    events = [Event(kind, tuple(sorted([(TRIGGER, 3, 5), ("胜者", 0, 3), ("败者", 5, 8)]))),
              Event(kind, tuple(sorted([(TRIGGER, 12, 14), ("败者", 9, 12), ("胜者", 14, 16)])))]
    rows = encode_events(tokenizer, [EventExample(text, events)], event_schema, 64)
    batch = collate([r.as_row() for r in rows], tokenizer.pad_token_id, len(event_schema.labels), 1)
    model = tiny(head, event_schema.label_names, EVENT_LINK_TYPES, len(tokenizer), triangular_links=True)

    def pointer_losses():
        with torch.no_grad():
            out = model.eval()(**batch)
        return [gplinker_loss(getattr(out, f"{part}_logits"), batch[f"{part}_labels"]).item()
                for part in ("entity", "head", "tail")]

    before = pointer_losses()
    train_steps(model, batch, 100)
    after = pointer_losses()
    assert all(a < 0.9 * b for a, b in zip(after, before)), (before, after)


def test_model_config_is_checked():
    config = S.SujiConfig.from_preset("roformer-tiny")
    with pytest.raises(ValueError, match="gplinker_head"):
        SujiForGPLinker(config)
    with pytest.raises(ValueError, match="head must be one of"):
        set_gplinker_config(config, "crf", ["a"], ["b"])
