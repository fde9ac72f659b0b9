"""Reading comprehension data: the CMRC2018 metric (hand cases pinning each rule, and a reference copy of
the official script), the SQuAD / DuReader / JSONL readers with their bad-input reports, the split by
passage."""

import json
import random
import re
from pathlib import Path

import pytest

from suji_models.tasks.mrc import (
    CMRC_PUNCTUATION, MrcReport, cmrc_em, cmrc_f1, mixed_segmentation, mrc_counts, mrc_scores, read_dureader,
    read_mrc, read_squad, strip_punctuation,
)
from suji_models.tasks.readers import DataError, split_by_group

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrc"
CMRC = DATA / "cmrc2018" / "cmrc2018_dev.json"
DUREADER = DATA / "dureader2.0_demo"


# ---- the metric, rule by rule ------------------------------------------------------------------


def test_em_strips_chinese_punctuation_case_and_outer_spaces():
    assert cmrc_em(["《战国无双3》"], "战国无双3") == 1.0
    assert cmrc_em(["光荣和ω-force"], "光荣和ωforce") == 1.0          # '-' is in the official list
    assert cmrc_em(["ABC"], "  abc ") == 1.0                          # lower-cased and stripped
    assert cmrc_em(["北京 大学"], "北京大学") == 0.0                     # inner spaces stay for EM
    assert cmrc_em(["北京"], "北京市") == 0.0


def test_em_keeps_what_the_official_list_lacks():
    # ASCII , . ( ) are not in the official list, and its '……' entry (two characters) never matches
    assert cmrc_em(["a,b"], "ab") == 0.0
    assert strip_punctuation("好……") == "好……"
    assert strip_punctuation("（注：前方）") == "注前方"
    assert "，" in CMRC_PUNCTUATION and "," not in CMRC_PUNCTUATION


def test_max_over_references():
    assert cmrc_em(["上海", "北京市"], "北京市") == 1.0
    assert cmrc_f1(["北京大学", "北京"], "北京") == 1.0
    assert cmrc_f1(["上海", "北"], "北京") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_f1_counts_the_longest_common_substring_not_subsequence():
    # 北京大学 vs 北京的大学: common subsequence 4, longest common *substring* 2
    p, r = 2 / 5, 2 / 4
    assert cmrc_f1(["北京大学"], "北京的大学") == pytest.approx(2 * p * r / (p + r))


def test_f1_segments_chinese_by_character_and_english_by_word():
    assert mixed_segmentation("2010年New York") == ["2010", "年", "new", "york"]
    assert cmrc_f1(["new york city"], "york") == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))
    assert cmrc_f1(["2010年"], "2010") == pytest.approx(2 / 3)       # '2010' is one word, not four chars
    assert cmrc_f1(["2010年"], "201") == 0.0


def test_f1_ignores_punctuation_and_handles_empty():
    assert cmrc_f1(["《红楼梦》"], "红楼梦") == 1.0
    assert cmrc_f1(["红楼梦"], "") == 0.0
    assert cmrc_f1(["红楼梦"], "西游记") == 0.0
    assert cmrc_f1([], "红楼梦") == 0.0


def test_counts_add_up_and_questions_without_references_score_zero():
    counts = mrc_counts([["北京"], ["上海"], []], ["北京", "上", "x"])
    assert counts["questions"] == 3 and counts["em"] == 1.0
    assert counts["f1"] == pytest.approx(1 + 2 / 3)
    assert mrc_scores(counts) == pytest.approx({"em": 100 / 3, "f1": 100 * (1 + 2 / 3) / 3, "questions": 3})


# The official cmrc2018_evaluate.py, copied (NLTK's word_tokenize -> its Treebank word tokenizer, which
# word_tokenize applies after sentence splitting; no data download needed).
def _official_segmentation(in_str, rm_punc=False):
    from nltk.tokenize import NLTKWordTokenizer
    in_str = str(in_str).lower().strip()
    segs_out, temp_str = [], ""
    sp_char = ['-', ':', '_', '*', '^', '/', '\\', '~', '`', '+', '=', '，', '。', '：', '？', '！', '“', '”', '；',
               '’', '《', '》', '……', '·', '、', '「', '」', '（', '）', '－', '～', '『', '』']
    for char in in_str:
        if rm_punc and char in sp_char:
            continue
        if re.search(r'[\u4e00-\u9fa5]', char) or char in sp_char:
            if temp_str != "":
                segs_out.extend(NLTKWordTokenizer().tokenize(temp_str))
                temp_str = ""
            segs_out.append(char)
        else:
            temp_str += char
    if temp_str != "":
        segs_out.extend(NLTKWordTokenizer().tokenize(temp_str))
    return segs_out


def _official_lcs(s1, s2):
    m = [[0 for i in range(len(s2) + 1)] for j in range(len(s1) + 1)]
    mmax = 0
    for i in range(len(s1)):
        for j in range(len(s2)):
            if s1[i] == s2[j]:
                m[i + 1][j + 1] = m[i][j] + 1
                mmax = max(mmax, m[i + 1][j + 1])
    return mmax


def _official_f1(answers, prediction):
    f1_scores = []
    for ans in answers:
        ans_segs = _official_segmentation(ans, rm_punc=True)
        prediction_segs = _official_segmentation(prediction, rm_punc=True)
        lcs_len = _official_lcs(ans_segs, prediction_segs)
        if lcs_len == 0:
            f1_scores.append(0)
            continue
        precision, recall = lcs_len / len(prediction_segs), lcs_len / len(ans_segs)
        f1_scores.append((2 * precision * recall) / (precision + recall))
    return max(f1_scores)


def test_metric_equals_the_official_script_on_real_answers_and_their_perturbations():
    data = json.loads(CMRC.read_text(encoding="utf-8"))["data"]
    rng = random.Random(0)
    qas = [qa for article in data for p in article["paragraphs"] for qa in p["qas"]]
    for qa in rng.sample(qas, 300):
        refs = [a["text"] for a in qa["answers"]]
        base = rng.choice(refs)
        cut = sorted(rng.sample(range(len(base) + 1), 2))
        for prediction in (base, base[cut[0]:cut[1]], base + "，的", "《" + base[1:] + "》", base.upper()):
            assert cmrc_f1(refs, prediction) == pytest.approx(_official_f1(refs, prediction))


# ---- readers -------------------------------------------------------------------------------------


def test_cmrc_reader_locates_answers_and_reports_what_it_cannot():
    report = MrcReport()
    examples = read_squad(CMRC, report)
    assert len(examples) == 3219 and len({ex.group for ex in examples}) == 848
    for ex in examples:
        assert len(ex.passages) == 1
        for start, end in ex.answers[0]:
            assert ex.passages[0][start:end] in ex.references
    # real defects of the file, counted with the question id
    assert report.counts["answer text not in passage (kept for the metric only)"] == 193
    assert report.counts["answer_start does not match the passage (realigned to the nearest occurrence)"] == 7
    assert "DEV_6_QUERY_2" in report.summary()
    assert sum(1 for ex in examples if ex.has_answer) == 3219  # every question keeps a located answer


def test_squad_reader_bad_input(tmp_path):
    bad = {"data": [{"paragraphs": [{"id": "P1", "context": "北京是中国的首都。", "qas": [
        {"id": "q1", "question": "首都是哪里？", "answers": [{"text": "北京", "answer_start": 3}]},
        {"id": "q2", "question": "  ", "answers": [{"text": "北京", "answer_start": 0}]},
        {"id": "q3", "question": "是什么？", "answers": [{"text": "上海", "answer_start": 0}]},
    ]}]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
    report = MrcReport()
    examples = read_squad(path, report)
    assert [ex.id for ex in examples] == ["q1", "q3"]
    assert examples[0].answers == [[(0, 2)]]                # realigned from the wrong answer_start
    assert examples[1].answers == [[]] and examples[1].references == ["上海"]
    summary = report.summary()
    assert f"{path}: question q2" in summary and f"{path}: question q3" in summary and "q1" in summary
    assert report.counts["empty question (skipped)"] == 1
    assert report.counts["no answer located in the passage (not trained on; scored)"] == 1
    missing = {"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "q", "answers": []}]}]}]}
    path.write_text(json.dumps(missing), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json.*qas\[0\].*'question'"):
        read_squad(path)


def test_dureader_reader_maps_word_spans_to_paragraph_characters():
    report = MrcReport()
    train = read_dureader(DUREADER / "search.train.json", report)
    dev = read_dureader(DUREADER / "search.dev.json", report)
    test = read_dureader(DUREADER / "search.test.json", report)
    assert (len(train), len(dev), len(test)) == (4, 2, 2)
    raw = [json.loads(line) for line in (DUREADER / "search.train.json").open(encoding="utf-8")]
    for question, example in zip(raw, train):
        assert example.id == str(question["question_id"])
        assert len(example.passages) == len(question["documents"])        # one passage per document
        located = [k for k, spans in enumerate(example.answers) if spans]
        assert located == question["answer_docs"]
        (start, end), = example.answers[located[0]]
        # the paragraph keeps its spaces; the fake answer was taken from the space-free segmentation
        found = example.passages[located[0]][start:end]
        assert "".join(found.split()) == "".join(question["fake_answers"][0].split())
        assert example.references == question["answers"]
    assert all(not ex.has_answer and not ex.references for ex in test)
    assert report.counts["answer_spans do not fit the segmented paragraph (found the fake answer)"] == 1


def test_read_mrc_detects_formats(tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"id": "a", "question": "谁？", "context": "我。"}\n{"id": "b", "question": "何？", "context": "它"}\n',
                     encoding="utf-8")
    assert [ex.id for ex in read_mrc(jsonl)] == ["a", "b"]
    assert [len(ex.passages) for ex in read_mrc(DUREADER / "search.dev.json")] == [5, 5]
    jsonl.write_text('{"id": "a", "context": "我。"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"q.jsonl:1: missing field 'question'"):
        read_mrc(jsonl)


def test_split_by_passage_keeps_each_passage_on_one_side():
    examples = read_squad(CMRC)
    train, dev = split_by_group(examples, lambda ex: ex.group, dev_fraction=0.2, seed=42)
    assert not {ex.group for ex in train} & {ex.group for ex in dev}
    assert len(train) + len(dev) == len(examples)
    assert [ex.id for ex in split_by_group(examples, lambda ex: ex.group, 0.2, 42)[1]] == [ex.id for ex in dev]
