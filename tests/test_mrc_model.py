"""Reading comprehension rows and models: every method's training target is the gold answer (read back
through the window's offsets), windows cover long passages, the seq2seq loss on answer positions only
equals UniLM's full loss, and the span model's loss is BERT's."""

import pytest
import torch
import torch.nn.functional as F

import suji_models as S
from suji_models.tasks.mrc import (
    MrcExample, MrcLayout, SujiForSpanQA, SujiForUniLMAnswers, collate_rows, encode_rows, passage_windows,
)
from tokenization import load_tokenizer

from .conftest import REPO_ROOT

TOKENIZER = REPO_ROOT.parent / "shared" / "models" / "suji-roformer-small-zh"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)


def _examples():
    long = "".join(f"第{i}段说的是北京和上海的事情。" for i in range(40)) + "答案在这里：长江大桥。" + "尾声" * 30
    short = "《战国无双3》是由光荣和ω-force开发的游戏。"
    return [
        MrcExample("long", "答案是什么？", [long], [[(long.index("长江大桥"), long.index("长江大桥") + 4)]], ["长江大桥"]),
        MrcExample("short", "谁开发的？", [short], [[(short.index("光荣"), short.index("光荣") + 10)]], ["光荣和ω-force"]),
        MrcExample("none", "没有答案？", ["什么也没有。"], [[]], []),
    ]


@pytest.mark.parametrize("method", ["span", "mlm", "seq2seq"])
def test_rows_carry_the_gold_answer(tokenizer, method):
    examples = _examples()
    layout = MrcLayout(method, max_length=64, max_question_tokens=8, max_answer_tokens=12)
    windows = passage_windows(tokenizer, examples, layout.room, overlap=16)
    questions = [tokenizer(ex.question, add_special_tokens=False)["input_ids"] for ex in examples]
    rows = encode_rows(tokenizer, layout, examples, windows, questions, with_target=True)
    assert len(rows) == len(windows)
    assert sum(w.example == 0 for w in windows) > 3            # the long passage is read in several windows
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    # every part of the long passage is in some window
    covered = set()
    for w in windows:
        if w.example == 0:
            covered.update(range(w.offsets[0][0], w.offsets[-1][1]))
    assert covered >= set(range(len(examples[0].passages[0])))
    sep = tokenizer.sep_token_id
    for row, w in zip(rows, windows):
        ex = examples[w.example]
        if method == "span":
            s, e = row["start_positions"], row["end_positions"]
            if w.answer is None:
                assert (s, e) == (0, 0)
            else:
                offsets = [None] * row["passage_start"] + w.offsets
                assert ex.passages[0][offsets[s][0]:offsets[e][1]] == ex.references[0]
        elif method == "mlm":
            labels = [t for t in row["slot_labels"] if t != -100]
            assert row["input_ids"][1:13] == [tokenizer.mask_token_id] * 12 and len(row["slot_labels"]) == 12
            assert labels[-1] == sep
            answer = labels[:-1]
            if w.answer is None:
                assert answer == []
            else:
                assert tokenizer.decode(answer).replace(" ", "") == ex.references[0].lower()
        else:
            target = [t for t, kind in zip(row["input_ids"], row["token_type_ids"]) if kind == 1]
            assert target[-1] == sep
            if w.answer is None:
                assert target == [sep]
            else:
                assert tokenizer.decode(target[:-1]).replace(" ", "") == ex.references[0].lower()


def test_window_answer_is_the_passage_text(tokenizer):
    examples = _examples()
    windows = passage_windows(tokenizer, examples, 40, overlap=10)
    holding = [w for w in windows if w.answer is not None]
    assert {w.example for w in holding} == {0, 1}
    for w in holding:
        first, last = w.answer
        start, end = examples[w.example].answers[0][0]
        assert examples[w.example].passages[0][w.offsets[first][0]:w.offsets[last][1]] == \
            examples[w.example].passages[0][start:end]


def test_layout_refuses_rows_without_room():
    with pytest.raises(ValueError, match="passage tokens"):
        _ = MrcLayout("mlm", max_length=64, max_question_tokens=32, max_answer_tokens=32).room


def _tiny_config():
    return S.SujiConfig.from_preset("roformer-tiny", vocab_size=60)


def test_seq2seq_answer_only_loss_equals_unilm_loss():
    torch.manual_seed(0)
    model = SujiForUniLMAnswers(_tiny_config()).eval()
    rows = [{"input_ids": [2, 5, 6, 7, 3, 9, 3, 6, 7, 3], "token_type_ids": [0] * 7 + [1] * 3},
            {"input_ids": [2, 5, 6, 3, 9, 3, 3], "token_type_ids": [0] * 6 + [1]}]
    batch = collate_rows(rows, "seq2seq", pad_token_id=0)
    labels = S.SujiForUniLM.unilm_labels(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    full = S.SujiForUniLM.forward(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  token_type_ids=batch["token_type_ids"], labels=labels)
    fast = model(**batch)
    torch.testing.assert_close(fast.loss, full.loss)
    assert fast.logits.shape == (4, 60)                          # 3 + 1 answer positions, not every position


def test_span_model_loss_and_padding():
    torch.manual_seed(0)
    model = SujiForSpanQA(_tiny_config()).eval()
    batch = collate_rows([{"input_ids": [2, 5, 3, 7, 8, 3], "token_type_ids": [0, 0, 0, 1, 1, 1],
                           "start_positions": 3, "end_positions": 4},
                          {"input_ids": [2, 5, 3, 7, 3], "token_type_ids": [0, 0, 0, 1, 1],
                           "start_positions": 0, "end_positions": 0}], "span", pad_token_id=0)
    out = model(**batch)
    assert out.start_logits[1, 5] < -1e3 and out.end_logits[1, 5] < -1e3   # padding never answers
    expected = (F.cross_entropy(out.start_logits, torch.tensor([3, 0]))
                + F.cross_entropy(out.end_logits, torch.tensor([4, 0]))) / 2
    torch.testing.assert_close(out.loss, expected)


def test_pretrained_encoder_loads_under_every_method(tmp_path):
    from suji_models.tasks.mrc import model_class_for

    torch.manual_seed(0)
    mlm = S.SujiForMaskedLM(_tiny_config())
    mlm.save_pretrained(tmp_path)
    ids = torch.tensor([[2, 5, 6, 3]])
    for method in ("span", "seq2seq", "mlm"):
        model = model_class_for(method).from_pretrained(tmp_path).eval()
        hidden = model.suji(ids).last_hidden_state
        torch.testing.assert_close(hidden, mlm.eval().suji(ids).last_hidden_state)
