"""NER readers on the real files, span <-> token mapping through offsets, and the metric against seqeval."""

import random

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from suji_models.tasks.ner import (
    NerExample,
    encode_examples,
    entity_scores,
    entity_types,
    iter_json_objects,
    read_cluener,
    read_ner,
    read_tagged,
    read_texts,
    spans_to_bio,
    split_examples,
    tags_to_spans,
    token_span_to_chars,
    write_predictions,
)
from tokenization import load_tokenizer

from .conftest import REPO_ROOT


@pytest.fixture(scope="module")
def ner_dir(shared_data):
    return shared_data / "ner"


def spans_with_text(example):
    return [(example.text[s:e], kind) for s, e, kind in example.entities]


def test_people_daily_bio(ner_dir):
    examples = read_tagged(ner_dir / "people_daily" / "example.dev", "bio")
    assert len(examples) == 2318
    assert sum(len(e.text) for e in examples) == 109870
    kinds = [k for e in examples for _, _, k in e.entities]
    # the dataset's readme: 1951 LOC, 984 ORG, 884 PER in the dev set
    assert (kinds.count("LOC"), kinds.count("ORG"), kinds.count("PER")) == (1951, 984, 884)
    for e in examples:
        for s, end, _ in e.entities:
            assert 0 <= s < end <= len(e.text)


def test_people_daily_known_sentence(ner_dir):
    examples = read_ner(ner_dir / "people_daily" / "example.dev", "bio")
    known = examples[14]
    assert known.text == "新华社北京5月7日电国务院副总理李岚清今天在中南海会见了美国前商务部长芭芭拉·弗兰克林。"
    assert known.entities == [(0, 3, "ORG"), (3, 5, "LOC"), (10, 13, "ORG"), (16, 19, "PER"), (22, 25, "LOC"),
                              (28, 34, "ORG"), (35, 43, "PER")]
    assert spans_with_text(known)[-2:] == [("美国前商务部", "ORG"), ("芭芭拉·弗兰克林", "PER")]
    assert examples[1].entities == [(5, 10, "ORG"), (11, 16, "ORG")]  # 青岛海牛队, 广州松日队


def test_weibo_strips_the_position_digits(ner_dir):
    examples = read_ner(ner_dir / "weibo" / "weiboNER_2nd_conll.train", "bio")
    assert len(examples) == 1350
    assert examples[0].text.startswith("科技全方位资讯智能，快捷的汽车生活需要有三屏一云爱你")
    assert not any(ch.isdigit() for ch in examples[0].text[:20])
    assert {"PER.NAM", "PER.NOM", "GPE.NAM", "ORG.NAM", "LOC.NAM"} <= set(entity_types(examples))
    dev = read_ner(ner_dir / "weibo" / "weiboNER_2nd_conll.dev", "bio")
    assert len(dev) == 270


def test_resume_and_msra_bmes(ner_dir):
    resume = read_ner(ner_dir / "resume" / "train.char.bmes", "bmes")
    assert len(resume) == 3821
    assert resume[0].text.startswith("高勇：男，中国国籍")
    assert spans_with_text(resume[0])[:2] == [("高勇", "NAME"), ("中国国籍", "CONT")]
    assert len(entity_types(resume)) == 8
    msra = read_ner(ner_dir / "msra_bmes" / "msra_test.txt", "bmes")  # CRLF line ends
    assert len(msra) == 5000 and not any("\r" in e.text for e in msra)
    assert entity_types(msra) == ["LOC", "ORG", "PER"]
    # S- tags are single-character entities
    assert any(e - s == 1 for ex in msra for s, e, _ in ex.entities)


def test_cluener_json_spans(ner_dir):
    train = read_cluener(ner_dir / "cluener2020" / "train.json")
    dev = read_ner(ner_dir / "cluener2020" / "dev.json", "cluener")
    assert (len(train), len(dev)) == (10748, 1343)
    assert sum(len(e.entities) for e in dev) == 3072
    assert len(entity_types(train)) == 10
    assert dev[0].text.startswith("彭小军认为")
    assert spans_with_text(dev[0]) == [("彭小军", "name"), ("台湾", "address")]
    assert dev[0].entities == [(0, 3, "name"), (15, 17, "address")]  # end exclusive
    # nested / overlapping entities survive (one pair overlaps in train)
    overlapping = [ex for ex in train
                   if any(a[1] > b[0] for a, b in zip(ex.entities, ex.entities[1:]))]
    assert len(overlapping) == 1


def test_reader_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.bio"
    bad.write_text("中 B-LOC\n国\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.bio:2"):
        read_tagged(bad)
    bmes = tmp_path / "x.bio"
    bmes.write_text("中 S-LOC\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not BIO"):
        read_tagged(bmes, "bio")


def test_tags_to_spans_follow_conlleval():
    assert tags_to_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [(0, 2, "PER"), (3, 4, "LOC")]
    assert tags_to_spans(["I-PER", "I-PER", "B-PER", "I-LOC"]) == [(0, 2, "PER"), (2, 3, "PER"), (3, 4, "LOC")]
    assert tags_to_spans(["B-ORG", "M-ORG", "E-ORG", "S-PER", "S-PER"]) == [(0, 3, "ORG"), (3, 4, "PER"), (4, 5, "PER")]
    tags, dropped = spans_to_bio(6, [(0, 3, "A"), (1, 2, "B"), (4, 6, "C")])
    assert tags == ["B-A", "I-A", "I-A", "O", "B-C", "I-C"] and dropped == [(1, 2, "B")]


def test_split_is_deterministic_and_disjoint(ner_dir):
    examples = read_ner(ner_dir / "people_daily" / "example.dev", "bio")
    train, dev = split_examples(examples, 0.2, seed=0)
    assert (len(train), len(dev)) == (1854, 464)
    again_train, again_dev = split_examples(examples, 0.2, seed=0)
    assert [e.text for e in dev] == [e.text for e in again_dev]
    ids = {id(e) for e in train}
    assert not any(id(e) in ids for e in dev)


def test_offsets_map_spans_with_wordpieces_and_unk():
    tokenizer = load_tokenizer(REPO_ROOT / "pretrain" / "data" / "vocab.txt")
    text = "Riddick在2008年访问北京，ａｂ😀很好"
    entities = [(0, 7, "PER"), (8, 13, "TIME"), (15, 17, "LOC"), (18, 21, "X"), (18, 20, "X")]
    (encoded,), report = encode_examples(tokenizer, [NerExample(text, entities)], ["LOC", "PER", "TIME", "X"], 64)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert tokens[:3] == ["[CLS]", "r", "##i"] and tokens[19] == "[UNK]"  # WordPieces and one [UNK] for "ａｂ😀"
    assert encoded.token_spans == [(1, 7, 1), (9, 13, 2), (16, 17, 0), (19, 19, 3)]
    # every token span maps back to exactly its characters
    back = [token_span_to_chars(encoded.offsets, first, last) for first, last, _ in encoded.token_spans]
    assert back == [(0, 7), (8, 13), (15, 17), (18, 21)]
    assert token_span_to_chars(encoded.offsets, 0, 3) is None  # touches [CLS]
    # "ａｂ" ends inside the [UNK] token: counted, with its text, not dropped silently
    assert report.aligned == 4 and [u[2] for u in report.unaligned] == ["ａｂ"]
    assert encoded.label_mask == [0] + [1] * (len(tokens) - 2) + [0]


def test_unaligned_and_truncated_spans_are_counted():
    tokenizer = load_tokenizer(REPO_ROOT / "pretrain" / "data" / "vocab.txt")
    text = "ａｂ😀手机在北京卖得很好"  # [CLS] [UNK]=ａｂ😀 手 机 在 北 | 京 卖 ...
    ex = NerExample(text, [(1, 3, "X"), (3, 5, "X"), (6, 8, "LOC"), (8, 10, "Y")])
    (encoded,), report = encode_examples(tokenizer, [ex], ["LOC", "X", "Y"], max_length=7)
    assert [u[2] for u in report.unaligned] == ["ｂ😀"]  # starts inside the [UNK]
    assert [t[1] for t in report.truncated] == [(6, 8, "LOC"), (8, 10, "Y")]  # past the kept tokens
    assert encoded.token_spans == [(2, 3, 1)]  # 手机
    assert report.aligned == 1 and report.truncated_examples == 1
    assert "1 not aligned to tokens, 2 cut off by truncation" in report.summary()


def random_corruption(tags, kinds, rng):
    out = []
    for tag in tags:
        r = rng.random()
        if r < 0.03:
            out.append("O")
        elif r < 0.06:
            out.append(rng.choice(["B-", "I-"]) + rng.choice(kinds))
        else:
            out.append(tag)
    return out


def test_metric_equals_seqeval_on_people_daily(ner_dir):
    examples = read_ner(ner_dir / "people_daily" / "example.dev", "bio")[:800]
    gold_tags = [spans_to_bio(len(e.text), e.entities)[0] for e in examples]
    rng = random.Random(0)
    pred_tags = [random_corruption(t, ["LOC", "ORG", "PER"], rng) for t in gold_tags]
    ours = entity_scores([tags_to_spans(t) for t in gold_tags], [tags_to_spans(t) for t in pred_tags])
    assert ours["f1"] == pytest.approx(f1_score(gold_tags, pred_tags), abs=1e-12)
    assert ours["precision"] == pytest.approx(precision_score(gold_tags, pred_tags), abs=1e-12)
    assert ours["recall"] == pytest.approx(recall_score(gold_tags, pred_tags), abs=1e-12)
    assert 0.3 < ours["f1"] < 0.95  # the corruption really changed things
    # gold spans read from the file are what seqeval reads from the tags
    assert [tags_to_spans(t) for t in gold_tags] == [e.entities for e in examples]
    # per type, too
    from seqeval.metrics import classification_report

    report = classification_report(gold_tags, pred_tags, output_dict=True)
    for kind in ("LOC", "ORG", "PER"):
        assert ours["per_type"][kind]["f1"] == pytest.approx(report[kind]["f1-score"], abs=1e-12)


def test_metric_edge_cases():
    assert entity_scores([[]], [[]])["f1"] == 0.0
    perfect = entity_scores([[(0, 2, "A"), (0, 4, "B")]], [[(0, 4, "B"), (0, 2, "A")]])
    assert perfect["f1"] == 1.0 and perfect["tp"] == 2
    half = entity_scores([[(0, 2, "A")], [(1, 3, "A")]], [[(0, 2, "A")], [(1, 3, "B")]])
    assert (half["precision"], half["recall"]) == (0.5, 0.5)


def test_prediction_jsonl_round_trip(tmp_path):
    out = write_predictions(tmp_path / "p.jsonl", ["张三在北京"], [[(0, 2, "PER"), (3, 5, "LOC")]])
    (record,) = list(iter_json_objects(out))
    assert record == {"text": "张三在北京", "entities": [{"start": 0, "end": 2, "type": "PER", "text": "张三"},
                                                      {"start": 3, "end": 5, "type": "LOC", "text": "北京"}]}
    assert read_texts(out) == ["张三在北京"]
    plain = tmp_path / "texts.txt"
    plain.write_text("第一句\n\n第二句\n", encoding="utf-8")
    assert read_texts(plain) == ["第一句", "第二句"]
