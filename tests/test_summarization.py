"""Summarization data pieces: sentence splitting, oracle extraction (vs brute force), readers, copy tags,
sentence pooling, exposure-bias replacement."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from suji_models.tasks import summarization as S
from suji_models.tasks.readers import DataError
from suji_models.tasks.text_metrics import cail_score, rouge

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data")


# ---- sentences ---------------------------------------------------------------------------------------


def test_split_sentences_keeps_closing_quotes_and_ellipses():
    text = "他说：“今天下雨了。”我们走吧！真的吗？？好……那就这样\n第二行；（注：完）结束。）"
    assert S.split_sentences(text) == ["他说：“今天下雨了。”", "我们走吧！", "真的吗？？", "好……", "那就这样",
                                       "第二行；", "（注：完）结束。）"]


def test_sentence_spans_cover_every_non_space_character_once():
    rng = random.Random(0)
    alphabet = list("甲乙丙丁，。！？；…“”‘’\n 、：") + ["……"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        spans = S.sentence_spans(text, max_length=rng.choice([None, 3, 8]))
        covered = [i for s, e in spans for i in range(s, e)]
        assert covered == sorted(set(covered))  # in order, no overlap
        assert {i for i, c in enumerate(text) if not c.isspace()} <= set(covered)
        for s, e in spans:
            assert not text[s].isspace() and not text[e - 1].isspace()


def test_long_sentences_are_cut_at_commas():
    text = "第一部分很长，第二部分也长，第三部分，尾。"
    assert S.split_sentences(text, max_length=8) == ["第一部分很长，", "第二部分也长，", "第三部分，尾。"]
    assert "".join(S.split_sentences(text, max_length=8)) == text
    assert S.split_sentences("没有任何逗号的一个很长很长的句子", max_length=4) == ["没有任何逗号的一个很长很长的句子"]


# ---- oracle --------------------------------------------------------------------------------------------


def _brute_force(sentences, summary, metric):
    """Every non-empty subset by bitmask; the best score (ties: fewer sentences, then first in order)."""
    best, best_subset = 0.0, []
    subsets = [[i for i in range(len(sentences)) if mask >> i & 1] for mask in range(1, 2 ** len(sentences))]
    for subset in sorted(subsets, key=lambda s: (len(s), s)):
        score = metric("".join(sentences[i] for i in subset), summary)
        if score > best:
            best, best_subset = score, subset
    return best, best_subset


def _random_documents(count, seed=0):
    rng = random.Random(seed)
    words = ["经济", "增长", "政策", "市场", "发布", "公司", "今年", "我们", "研究", "方法", "结果", "显著"]
    for _ in range(count):
        sentences = ["".join(rng.choice(words) for _ in range(rng.randint(1, 4))) + "。"
                     for _ in range(rng.randint(1, 7))]
        summary = "".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        yield sentences, summary


def test_exhaustive_oracle_equals_brute_force_on_small_documents():
    for sentences, summary in _random_documents(40):
        best, subset = _brute_force(sentences, summary, cail_score)
        found = S.exhaustive_oracle(sentences, summary)
        assert found == subset
        assert cail_score("".join(sentences[i] for i in found), summary) == pytest.approx(best)


def test_greedy_oracle_against_brute_force():
    for sentences, summary in _random_documents(40, seed=1):
        greedy = S.oracle_extract(sentences, summary)
        score = cail_score("".join(sentences[i] for i in greedy), summary)
        best, _ = _brute_force(sentences, summary, cail_score)
        assert score <= best + 1e-12
        # one sentence: greedy's first pick is the brute-force best single sentence
        single = S.oracle_extract(sentences, summary, max_sentences=1)
        best_single = max(cail_score(s, summary) for s in sentences)
        if best_single > 0:
            assert cail_score(sentences[single[0]], summary) == pytest.approx(best_single)
        # greedy stops at a local optimum: no further single sentence improves it
        for i in set(range(len(sentences))) - set(greedy):
            assert cail_score("".join(sentences[j] for j in sorted(greedy + [i])), summary) <= score + 1e-12
    # a custom metric (ROUGE-1 F) is honoured
    sentences = ["甲乙。", "丙丁。", "戊己。"]
    assert S.oracle_extract(sentences, "甲乙丙丁", metric=lambda c, r: rouge(c, r)["rouge-1"]) == [0, 1]


def test_exhaustive_oracle_refuses_large_documents():
    with pytest.raises(ValueError, match="too many"):
        S.exhaustive_oracle(["a"] * 20, "a")


# ---- readers ---------------------------------------------------------------------------------------------


@needs_data
def test_real_readers():
    csl = S.read_summaries(SHARED / "summarization" / "csl" / "dev.tsv", "csl")
    assert len(csl.examples) == 1000 and not csl.skipped
    assert csl.examples[0].summary.startswith("一种基于平方和优化")
    lcsts = S.read_summaries(SHARED / "summarization" / "lcsts_part3" / "PART_III.txt", "lcsts")
    assert len(lcsts.examples) == 1106
    assert sum(e.human_label >= 3 for e in lcsts.examples) == 725
    assert lcsts.examples[0].summary == "可穿戴技术十大设计原则" and lcsts.examples[0].id == "0"
    inews = S.read_summaries(SHARED / "corpus" / "inews" / "dev.jsonl", "inews")
    assert len(inews.examples) + sum(inews.skipped.values()) == 999
    assert inews.skipped["empty source"] == 5 and inews.skipped["empty summary"] == 1
    assert "5 empty source" in inews.report()


def test_reader_errors_name_file_line_and_field(tmp_path):
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("p\tabstract\ttitle\np\tonly two\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected"):
        S.read_summaries(bad_tsv, "csl")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"source": "a", "summary": "b"}\n{"source": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'summary'"):
        S.read_summaries(bad_json, "jsonl")
    assert [e.id for e in S.read_summaries(bad_json, "jsonl", need_summary=False).examples] == ["1", "2"]
    bad_xml = tmp_path / "bad.txt"
    bad_xml.write_text("<doc id=0>\n<summary>s</summary>\n<short_text>t</short_text>\n</doc>\n"
                       "<doc id=1>\n<human_label>x</human_label><summary>s</summary><short_text>t</short_text>\n</doc>\n",
                       encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:5: field <human_label> must be an integer"):
        S.read_summaries(bad_xml, "lcsts")
    bad_xml.write_text("<doc id=0>\n<summary>s</summary>\n</doc>\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:1: missing field <short_text>"):
        S.read_summaries(bad_xml, "lcsts")
    with pytest.raises(ValueError, match="unknown summarization format"):
        S.read_summaries(bad_xml, "xml")


# ---- copy tags -------------------------------------------------------------------------------------------


def _lcs_brute(a, b):
    for size in range(min(len(a), len(b)), 0, -1):
        subs = {tuple(x) for x in itertools.combinations(a, size)}
        if any(tuple(y) in subs for y in itertools.combinations(b, size)):
            return size
    return 0


def test_copy_bio_tags():
    source, target = list("今天北京天气很好我们去公园"), list("北京天气好去公园玩")
    tags = S.copy_bio_tags(source, target)
    assert [S.COPY_TAGS[t] for t in tags] == list("BIIIBBIIO")
    rng = random.Random(0)
    for _ in range(100):
        a = [rng.randint(0, 4) for _ in range(rng.randint(0, 8))]
        b = [rng.randint(0, 4) for _ in range(rng.randint(0, 8))]
        pairs = S.lcs_alignment(a, b)
        assert len(pairs) == _lcs_brute(a, b)
        assert all(a[i] == b[j] for i, j in pairs)
        tags = S.copy_bio_tags(a, b)
        # every B I* run is a contiguous n-gram of the source
        runs, current = [], []
        for token, tag in zip(b, tags):
            if tag != S.TAG_I and current:
                runs.append(current)
                current = []
            if tag != S.TAG_O:
                current.append(token)
        runs += [current] if current else []
        for run in runs:
            assert any(a[i:i + len(run)] == run for i in range(len(a)))


# ---- extractor pieces ---------------------------------------------------------------------------------


def test_pool_sentences_is_the_mean_of_each_sentences_tokens():
    hidden = torch.randn(2, 7, 5)
    index = torch.tensor([[-1, 0, 0, 1, 2, 2, -1], [-1, 1, 1, 1, -1, -1, -1]])
    pooled = S.pool_sentences(hidden, index, 3)
    for b in range(2):
        for s in range(3):
            members = hidden[b][index[b] == s]
            expected = members.mean(0) if len(members) else torch.zeros(5)
            torch.testing.assert_close(pooled[b, s], expected)


def test_encode_sentences_and_pick_sentences():
    class Tok:
        cls_token_id, sep_token_id, unk_token_id = 1, 2, 3

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [10 + ord(c) % 50 for c in text]}

    encoded = S.encode_sentences(["甲乙。", "丙丁戊。", "己。"], Tok(), max_length=8)
    assert encoded.input_ids[0] == 1 and encoded.input_ids[-1] == 2 and len(encoded.input_ids) == 8
    assert encoded.sentence_index == [-1, 0, 0, 0, 1, 1, 1, -1] and encoded.kept == 2
    assert S.pick_sentences([0.1, 0.5, 0.3, 0.9], count=3) == [1, 2]
    assert S.pick_sentences([0.1, 0.15], count=2) == [1]


def test_replace_target_tokens_touches_only_target_inputs():
    ids = torch.arange(100, 140).view(2, 20)
    types = torch.tensor([[0] * 8 + [1] * 12, [0] * 5 + [1] * 10 + [0] * 5])
    mask = torch.tensor([[1] * 20, [1] * 15 + [0] * 5])
    replaced = S.replace_target_tokens(ids, types, mask, 0.5, 5, 50, torch.Generator().manual_seed(0))
    changed = replaced != ids
    assert not changed[~(types.bool() & mask.bool())].any()
    assert 0.2 < changed[types.bool() & mask.bool()].float().mean() < 0.8
    assert torch.equal(S.replace_target_tokens(ids, types, mask, 0.0, 5, 50), ids)


def test_extractor_loads_an_encoder_checkpoint_with_a_finite_new_head(tmp_path):
    import suji_models

    config = suji_models.SujiConfig.from_preset("roformer-tiny")
    suji_models.SujiForMaskedLM(config).save_pretrained(tmp_path)
    model = S.SujiForSentenceExtraction.from_pretrained(tmp_path, config=config)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    index = torch.tensor([[-1, 0, 0, 1, 1, 2, -1]])
    out = model(input_ids=torch.randint(5, 100, (1, 7)), sentence_index=index,
                sentence_labels=torch.tensor([[1, 0, -100]]))
    assert out.logits.shape == (1, 3) and torch.isfinite(out.loss)
    # a sentence's score depends on its neighbours (the context layer), not on sentences two away
    vectors = torch.randn(1, 5, config.hidden_size)
    moved = vectors.clone()
    moved[0, 4] += 1.0
    scorer = model.classifier
    base, after = scorer(vectors), scorer(moved)
    torch.testing.assert_close(after[0, :3], base[0, :3])
    assert not torch.allclose(after[0, 3:], base[0, 3:])
