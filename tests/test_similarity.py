"""Sentence embeddings: CoSENT loss, Spearman, pooling, pair readers and splits, the pair model and
the encode API (tiny random encoders; the shared data only for reader counts)."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import suji_models as S
from suji_models.losses import cosent_loss
from suji_models.tasks.readers import DataError
from suji_models.tasks.similarity import (
    SentenceEmbedder,
    SujiForSentenceEmbedding,
    SentencePair,
    collate_pairs,
    encode,
    evaluate_pairs,
    load_dataset,
    pool,
    read_pairs,
    sbert_classes,
    set_sentence_config,
    spearman,
)
from suji_models.tasks.whitening import Whitening
from tokenization import load_tokenizer

from .conftest import REPO_ROOT

PAIRS = [SentencePair("今天天气很好", "今天天气不错", 1), SentencePair("我想买一部手机", "北京是中国的首都", 0),
         SentencePair("他在跑步", "他正在跑步", 1), SentencePair("花呗怎么还款", "借呗可以提额吗", 0)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(REPO_ROOT / "pretrain" / "data" / "vocab.txt")


def tiny_encoder(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = S.SujiConfig.from_preset("roformer-tiny", vocab_size=len(tokenizer), hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
    return S.SujiModel(config, add_pooling_layer=False).eval()


# ------------------------------------------------------------------------------------------ CoSENT

def test_cosent_loss_equals_the_formula_over_all_wrongly_ordered_pairs():
    cos = torch.tensor([0.9, -0.2, 0.4, 0.1, 0.7])
    labels = torch.tensor([3.0, 0.0, 5.0, 0.0, 3.0])  # graded, with ties
    terms = [math.exp(20 * (cos[i] - cos[j]).item())
             for i, j in itertools.product(range(5), range(5)) if labels[i] < labels[j]]
    torch.testing.assert_close(cosent_loss(cos, labels), torch.tensor(math.log(1 + sum(terms))))


def test_cosent_loss_only_sees_the_order_of_the_labels_and_prefers_the_right_order():
    cos = torch.tensor([0.8, 0.1, 0.5])
    torch.testing.assert_close(cosent_loss(cos, torch.tensor([2.0, 0.0, 1.0])),
                               cosent_loss(cos, torch.tensor([5.0, -1.0, 3.0])))
    right = cosent_loss(torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0]))
    wrong = cosent_loss(torch.tensor([0.1, 0.9]), torch.tensor([1.0, 0.0]))
    assert right < 0.01 < wrong
    assert cosent_loss(cos, torch.ones(3)).item() == 0.0  # all ties: no pair is ordered


# ------------------------------------------------------------------------------------------ Spearman

def test_spearman_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    labels = rng.integers(0, 6, size=200)  # STS-B-like graded labels: many ties
    assert spearman(x, labels) == pytest.approx(spearmanr(x, labels).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [1, 1, 1]) == 0.0
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


# ------------------------------------------------------------------------------------------ pooling

def test_pooling_modes_by_hand():
    torch.manual_seed(1)
    hidden = [torch.randn(2, 4, 3) for _ in range(3)]  # embeddings, layer 1, layer 2
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[-1][:, 0])
    torch.testing.assert_close(pool(hidden, mask, "mean")[0], hidden[-1][0, :3].mean(0))
    torch.testing.assert_close(pool(hidden, mask, "mean")[1], hidden[-1][1, :2].mean(0))
    expected = ((hidden[1][1, :2] + hidden[2][1, :2]) / 2).mean(0)  # first *layer*, not the embeddings
    torch.testing.assert_close(pool(hidden, mask, "first-last-avg")[1], expected)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "max")


# ------------------------------------------------------------------------------------------ readers

def test_read_pairs_formats_and_errors(tmp_path):
    tsv = tmp_path / "a.txt"
    tsv.write_text("今天\t明天\t1\n\n好的\t不好\t0\n", encoding="utf-8")
    assert read_pairs(tsv) == [SentencePair("今天", "明天", 1.0), SentencePair("好的", "不好", 0.0)]
    atec = tmp_path / "b.csv"
    atec.write_text("1\t花呗\t借呗\t0\n", encoding="utf-8")
    assert read_pairs(atec, "atec") == [SentencePair("花呗", "借呗", 0.0)]
    paws = tmp_path / "c.tsv"
    paws.write_text("id\tsentence1\tsentence2\tlabel\n4\t甲\t乙\t1\n", encoding="utf-8")
    assert read_pairs(paws, "pawsx") == [SentencePair("甲", "乙", 1.0)]
    bad = tmp_path / "bad.txt"
    bad.write_text("今天\t明天\t1\n今天\t明天\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 3"):
        read_pairs(bad)
    bad.write_text("今天\t明天\tyes\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:1: field label"):
        read_pairs(bad)
    bad.write_text("今天\t \t1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:1: empty sentence 2"):
        read_pairs(bad)


@pytest.mark.parametrize("name,n_train,n_dev", [("stsb", 5231, 1458), ("lcqmc", 7042, 1760),
                                                ("pawsx", 1600, 400)])
def test_shared_datasets_read_whole_and_split_with_a_seed(shared_data, name, n_train, n_dev):
    train, dev, description = load_dataset(name, shared_data / "similarity", dev_fraction=0.2, seed=0)
    assert (len(train), len(dev)) == (n_train, n_dev)
    if name != "stsb":
        again, _, _ = load_dataset(name, shared_data / "similarity", dev_fraction=0.2, seed=0)
        other, _, _ = load_dataset(name, shared_data / "similarity", dev_fraction=0.2, seed=1)
        assert again == train and other != train and "seed 0" in description
        assert not set(train) & set(dev) or len(set(train)) < len(train)  # disjoint unless duplicated rows


# ------------------------------------------------------------------------------------------ model

def test_pair_model_scores_cosines_and_trains_both_objectives(tokenizer):
    batch = collate_pairs(tokenizer, PAIRS, 32)
    assert batch["input_ids"].shape[0] == 2 * len(PAIRS)
    for objective in ("cosent", "sbert"):
        torch.manual_seed(0)
        config = S.SujiConfig.from_preset("roformer-tiny", vocab_size=len(tokenizer), hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0)
        model = SujiForSentenceEmbedding(set_sentence_config(config, "mean", objective, num_classes=2))
        out = model(**batch)
        u = model.embed(batch["input_ids"][:4], batch["attention_mask"][:4])
        v = model.embed(batch["input_ids"][4:], batch["attention_mask"][4:])
        torch.testing.assert_close(out.cosines, torch.nn.functional.cosine_similarity(u, v, dim=-1))
        if objective == "cosent":
            torch.testing.assert_close(out.loss, cosent_loss(out.cosines, batch["labels"]))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        first = out.loss.item()
        for _ in range(30):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
        assert model(**batch).loss.item() < first / 2, objective
        vectors = model(batch["input_ids"], batch["attention_mask"], encode_only=True, pooling="cls").vectors
        torch.testing.assert_close(vectors, model.embed(batch["input_ids"], batch["attention_mask"], pooling="cls"))
        np.testing.assert_allclose(encode(model, tokenizer, [PAIRS[0].text_a], "cls")[0], vectors[0].detach().numpy(),
                                   atol=1e-5)
    assert sbert_classes(PAIRS) == 2
    with pytest.raises(ValueError, match="integer labels"):
        sbert_classes([SentencePair("a", "b", 2.5)])


def test_encode_keeps_input_order_and_embedder_round_trips_with_whitening(tokenizer, tmp_path):
    encoder = tiny_encoder(tokenizer)
    texts = ["今天天气很好", "好", "我想买一部新的手机可以吗", "北京", "他在跑步"]
    together = encode(encoder, tokenizer, texts, "mean", batch_size=2)
    alone = np.stack([encode(encoder, tokenizer, [t], "mean")[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    whitening = Whitening.fit(np.random.default_rng(0).normal(size=(50, encoder.config.hidden_size)), dim=8)
    embedder = SentenceEmbedder(encoder, tokenizer, "mean", 32, whitening)
    vectors = embedder.encode(texts)
    assert vectors.shape == (5, 8)
    embedder.save_pretrained(tmp_path / "emb")
    loaded = SentenceEmbedder.from_pretrained(tmp_path / "emb")
    assert loaded.pooling == "mean" and loaded.whitening.dim == 8
    np.testing.assert_allclose(loaded.encode(texts), vectors, atol=1e-5)
    scores = loaded.similarity(texts[:2], texts[2:4])
    assert scores.shape == (2,) and np.all(np.abs(scores) <= 1 + 1e-6)


def test_evaluate_pairs_is_the_spearman_of_the_pair_cosines(tokenizer):
    encoder = tiny_encoder(tokenizer)
    result = evaluate_pairs(encoder, tokenizer, PAIRS, "cls")
    vectors_a = encode(encoder, tokenizer, [p.text_a for p in PAIRS], "cls")
    vectors_b = encode(encoder, tokenizer, [p.text_b for p in PAIRS], "cls")
    cos = (vectors_a * vectors_b).sum(1) / np.linalg.norm(vectors_a, axis=1) / np.linalg.norm(vectors_b, axis=1)
    np.testing.assert_allclose(result["scores"], cos, atol=1e-5)
    assert result["spearman"] == pytest.approx(100 * spearmanr(cos, [p.label for p in PAIRS]).statistic)
