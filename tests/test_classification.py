"""Classification: readers (real files and bad rows), label handling, the single/multi-label model,
and CAN against its closed form."""

import numpy as np
import pytest
import torch

import suji_models as S
from suji_models.losses import multilabel_categorical_crossentropy, soft_multilabel_categorical_crossentropy
from suji_models.tasks.classification import (
    SujiForTextClassification,
    TextExample,
    can_adjust,
    can_report,
    collate_texts,
    is_multi_label,
    label_names_of,
    label_prior,
    load_dataset,
    read_json_labelled,
    read_label_tsv,
    set_classification_config,
    top_k_entropy,
)
from suji_models.tasks.readers import DataError
from tokenization import load_tokenizer

from .conftest import REPO_ROOT


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(REPO_ROOT / "pretrain" / "data" / "vocab.txt")


@pytest.mark.parametrize("name,sizes,classes", [
    ("chnsenticorp", (9600, 1200, 1200), 2), ("thucnews", (8000, 2000, None), 10), ("tnews", (1185, 1098, 2010), 15),
    ("csl", (8000, 1000, 1000), 13), ("smp2020_usual", (27766, 2000, 5000), 6), ("iflytek", (3024, 1373, 1749), 119)])
def test_shared_datasets(shared_data, name, sizes, classes):
    train, dev, test, _ = load_dataset(name, shared_data / "classification")
    assert (len(train), len(dev), len(test) if test is not None else None) == sizes
    assert len(label_names_of(train)) == classes
    assert all(ex.text.strip() for ex in train[:100]) and not is_multi_label(train)


def test_reader_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "x.tsv"
    bad.write_text("label\ttext_a\n1\t好\n0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x.tsv:3: expected 2"):
        read_label_tsv(bad)
    bad.write_text("text\n好\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x.tsv:1: the header"):
        read_label_tsv(bad)
    js = tmp_path / "x.json"
    js.write_text('{"sentence": "好", "label_desc": "a"}\n{"sentence": "坏"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.json:2: missing field 'label_desc'"):
        read_json_labelled(js)
    js.write_text('{"sentence": "好", "label_desc": {"a": 1.5}}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.json:1: .*\[0, 1\]"):
        read_json_labelled(js)


def test_multi_label_and_soft_label_json(tmp_path):
    js = tmp_path / "m.json"
    js.write_text('{"text": "又好又快", "labels": ["好", "快"]}\n{"text": "慢", "labels": {"慢": 0.8, "好": 0.1}}\n',
                  encoding="utf-8")
    examples = read_json_labelled(js, "text", "labels")
    assert examples[0].label == ("好", "快") and examples[1].label == (("好", 0.1), ("慢", 0.8))
    assert is_multi_label(examples) and label_names_of(examples) == ["好", "快", "慢"]


def tiny_classifier(tokenizer, n, **kw):
    torch.manual_seed(0)
    config = S.SujiConfig.from_preset("roformer-tiny", vocab_size=len(tokenizer), hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
    return SujiForTextClassification(set_classification_config(config, [str(i) for i in range(n)], **kw))


def test_single_multi_and_soft_label_losses_and_pairs(tokenizer):
    examples = [TextExample("今天天气很好", "好"), TextExample("今天下雨了", "坏", None)]
    index = {"坏": 0, "好": 1}
    batch = collate_texts(tokenizer, examples, 32, index)
    model = tiny_classifier(tokenizer, 2)
    out = model(**batch)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0])))
    multi = [TextExample("又好又快", ("好", "快")), TextExample("慢", ("慢",))]
    mindex = {"好": 0, "快": 1, "慢": 2}
    mbatch = collate_texts(tokenizer, multi, 32, mindex)
    torch.testing.assert_close(mbatch["labels"], torch.tensor([[1.0, 1, 0], [0, 0, 1]]))
    model = tiny_classifier(tokenizer, 3, multi_label=True)
    out = model(**mbatch)
    torch.testing.assert_close(out.loss, multilabel_categorical_crossentropy(mbatch["labels"], out.logits).mean())
    soft = [TextExample("慢", (("慢", 0.8), ("好", 0.1)))]
    sbatch = collate_texts(tokenizer, soft, 32, mindex)
    model = tiny_classifier(tokenizer, 3, multi_label=True, soft_labels=True)
    out = model(**sbatch)
    torch.testing.assert_close(out.loss, soft_multilabel_categorical_crossentropy(sbatch["labels"], out.logits).mean())
    pairs = collate_texts(tokenizer, [TextExample("花呗", "1", "借呗")], 32, {"1": 0})
    assert pairs["token_type_ids"].sum() > 0  # the second text is segment 1
    with pytest.raises(ValueError, match="soft labels"):
        set_classification_config(S.SujiConfig(), ["a"], soft_labels=True)
    with pytest.raises(DataError, match="mixes"):
        collate_texts(tokenizer, [TextExample("a", "1", "b"), TextExample("c", "1")], 32, None)


def test_top_k_entropy():
    probs = np.array([[0.98, 0.01, 0.01, 0.0], [0.3, 0.3, 0.3, 0.1], [0.5, 0.25, 0.25, 0.0]])
    got = top_k_entropy(probs, 3)
    assert got[0] < 0.15 and got[1] == pytest.approx(1.0)
    assert got[2] == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)) / np.log(3))


def test_can_one_iteration_equals_its_closed_form_and_leaves_confident_rows():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.3, size=40)
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    adjusted, low = can_adjust(probs, prior, top_k=3, threshold=0.6)
    assert 0 < low.sum() < 40
    np.testing.assert_array_equal(adjusted[~low], probs[~low])
    column = probs[~low].sum(0)
    for i in np.flatnonzero(low):
        # one round: column-normalize [confident; y], times the prior, row-normalize the last row
        y = probs[i] / (column + probs[i]) * prior
        np.testing.assert_allclose(adjusted[i], y / y.sum())
    # alpha and more iterations: compare with a plain transcription of the post's loop
    adjusted2, _ = can_adjust(probs, prior, top_k=3, threshold=0.6, alpha=2.0, iters=3)
    i = np.flatnonzero(low)[0]
    Y = np.concatenate([probs[~low], probs[i:i + 1]])
    for _ in range(3):
        Y = Y ** 2
        Y = Y / Y.sum(0, keepdims=True) * prior
        Y = Y / Y.sum(1, keepdims=True)
    np.testing.assert_allclose(adjusted2[i], Y[-1])


def test_can_without_confident_rows_changes_nothing():
    probs = np.full((5, 3), 1 / 3)
    adjusted, low = can_adjust(probs, np.array([0.8, 0.1, 0.1]))
    np.testing.assert_array_equal(adjusted, probs)
    assert low.all()  # all low-confidence, reported as such, yet left as they are


def test_can_pulls_uncertain_predictions_toward_the_prior():
    # every confident prediction is class 0, the prior says class 1 is as common: an uncertain
    # tie between 0 and 1 should go to class 1 after CAN
    confident = np.tile([[0.9, 0.05, 0.05]], (20, 1))
    uncertain = np.array([[0.4, 0.39, 0.21]])
    probs = np.concatenate([confident, uncertain])
    gold = np.array([0] * 20 + [1])
    report = can_report(probs, gold, prior=np.array([0.5, 0.45, 0.05]), top_k=3, threshold=0.8)
    assert report["low_confidence"] == 1
    assert report["accuracy_can"] == 100.0 > report["accuracy"]
    assert label_prior([TextExample("a", "x"), TextExample("b", "y"), TextExample("c", "y")], ["x", "y"]).tolist() \
        == pytest.approx([1 / 3, 2 / 3])
