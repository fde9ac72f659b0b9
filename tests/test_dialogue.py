"""Dialogue (DialoGPT-style LM on LCCC): reader, row layout, history cutting, reply-only loss,
UniLM-style prefix mask, generation through generate() (cached, left-padded batches, speakers),
decoding options, streaming and the chat loop."""

import io
import json
from collections import Counter

import pytest
import torch

import suji_models as S
from suji_models.tasks import dialogue as D
from suji_models.tasks.readers import DataError
from tokenization import load_tokenizer

from .conftest import SHARED

LCCC = SHARED / "data" / "dialogue" / "lccc_toy"
ENCODER = SHARED / "models" / "suji-roformer-small-zh"
SP = D.Special(cls=101, sep=102, pad=0)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ENCODER)


def tiny_model(tokenizer, family="roformer"):
    torch.manual_seed(0)
    preset = "roformer-tiny" if family == "roformer" else "gpt2-tiny"
    config = S.SujiConfig.from_preset(preset, vocab_size=len(tokenizer), max_position_embeddings=128,
                                      type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return S.SujiForCausalLM(config).eval()


# ---- reading -------------------------------------------------------------------------------------


def test_reader_rejoins_characters_of_the_lccc_files():
    stats = Counter()
    train = D.read_dialogues(LCCC / "toy_train.txt", stats)
    assert len(train) == 10000 and stats["dialogues"] == 10000
    first_line = (LCCC / "toy_train.txt").read_text(encoding="utf-8").splitlines()[0]
    assert train[0] == [u.replace(" ", "") for u in first_line.split("\t")]
    assert all(" " not in u for d in train[:200] for u in d)
    assert len(D.read_dialogues(LCCC / "toy_valid.txt")) == 2000
    multi = D.read_dialogues(f"{LCCC / 'toy_data.json'}#train")
    assert len(multi) == 1000 and max(len(d) for d in multi) > 5
    assert multi[0][0] == "你去那儿竟然不喊我生气了，快点给我道歉"
    assert len(D.read_many(f"{LCCC / 'toy_valid.txt'},{LCCC / 'toy_data.json'}#valid")) == 2200


def test_reader_errors_and_counted_skips(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("你 好\t好\n\n独 白\n", encoding="utf-8")
    stats = Counter()
    assert D.read_dialogues(path, stats) == [["你好", "好"]]
    assert stats["dialogues with one utterance"] == 1 and stats["empty lines"] == 1
    path.write_text("你 好\t好\n在 吗\t \t嗯\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.txt:2 \(turn 2\): empty utterance"):
        D.read_dialogues(path)
    js = tmp_path / "d.json"
    js.write_text(json.dumps({"train": [["a", "b"]]}), encoding="utf-8")
    with pytest.raises(DataError, match="name one as"):
        D.read_dialogues(js)
    with pytest.raises(DataError, match="no split 'dev'"):
        D.read_dialogues(f"{js}#dev")
    js.write_text(json.dumps({"train": [["a", 3]]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"#train \(dialogue 0\) \(turn 2\): expected a string"):
        D.read_dialogues(f"{js}#train")


# ---- layout and loss mask ------------------------------------------------------------------------


def test_layout_segments_and_reply_only_labels():
    row = D.encode_dialogue([[5, 6], [7], [8, 9]], SP, max_length=64)
    assert row.input_ids == [101, 5, 6, 102, 7, 102, 8, 9, 102]
    # speakers alternate; each closing [SEP] carries the next speaker (the one it predicts)
    assert row.token_type_ids == [0, 0, 0, 1, 1, 0, 0, 0, 1]
    # the first utterance (and its [SEP]) is context; replies and their closing [SEP] are targets
    assert row.labels == [-100, -100, -100, -100, 7, 102, 8, 9, 102]
    assert (row.dropped_turns, row.cut_tokens) == (0, 0)


def test_history_is_cut_from_the_oldest_turn_never_mid_reply():
    turns = [[1] * 5, [2] * 4, [3] * 3, [4] * 6]
    full = 1 + sum(len(t) + 1 for t in turns)
    assert D.encode_dialogue(turns, SP, full).dropped_turns == 0
    row = D.encode_dialogue(turns, SP, full - 1)  # one token too many: the whole oldest turn goes
    assert row.dropped_turns == 1 and row.input_ids == [101] + [2] * 4 + [102] + [3] * 3 + [102] + [4] * 6 + [102]
    assert row.token_type_ids[:2] == [0, 0]  # speakers counted from the first kept turn
    row = D.encode_dialogue(turns, SP, 11)  # only the newest context turn, cut to its end, + the whole reply
    assert row.dropped_turns == 2 and row.cut_tokens == 1
    assert row.input_ids == [101, 3, 3, 102] + [4] * 6 + [102]
    assert row.labels == [-100] * 4 + [4] * 6 + [102]
    assert D.encode_dialogue(turns, SP, 9) is None  # the reply alone needs 1 + 7 + one context token + [SEP]


def test_prefix_rows_one_per_reply_with_history_as_prefix():
    rows = D.encode_reply_rows([[5, 6], [7], [8, 9]], SP, 64, mask="prefix")
    assert len(rows) == 2
    assert rows[0].input_ids == [101, 5, 6, 102, 7, 102] and rows[0].prefix_length == 4
    assert rows[0].labels == [-100] * 4 + [7, 102]
    assert rows[1].prefix_length == 6 and rows[1].labels == [-100] * 6 + [8, 9, 102]
    batch = D.collate(rows, pad_id=0, mask="prefix")
    assert batch["prefix_lengths"].tolist() == [4, 6]
    assert batch["input_ids"][0].tolist() == [101, 5, 6, 102, 7, 102, 0, 0, 0]
    assert batch["labels"][0, 6:].tolist() == [-100] * 3 and batch["attention_mask"][0].sum() == 6


def test_reply_nll_matches_brute_force_and_the_model_loss(tokenizer):
    model = tiny_model(tokenizer)
    rows = [D.encode_dialogue([[500, 600, 700], [800], [900, 901]], SP, 64),
            D.encode_dialogue([[1000], [1100, 1200]], SP, 64)]
    batch = D.collate(rows, pad_id=0)
    labels = batch.pop("labels")
    logits = model(**batch).logits
    nll, count = D.reply_nll(logits, labels)
    expected, n = 0.0, 0
    for b, row in enumerate(rows):
        for t in range(1, len(row.input_ids)):
            if row.labels[t] != -100:  # position t-1 predicts token t
                expected -= torch.log_softmax(logits[b, t - 1], -1)[row.input_ids[t]].item()
                n += 1
    assert count == n == 3 + 2 + 3
    torch.testing.assert_close(nll.item(), expected, rtol=1e-5, atol=1e-4)
    loss = model(**batch, labels=labels).loss
    torch.testing.assert_close(loss.item() * count, nll.item(), rtol=1e-5, atol=1e-4)
    result = D.evaluate_perplexity(model, rows, pad_id=0, mask="causal", batch_size=1)
    torch.testing.assert_close(result["perplexity"], torch.exp(nll / count).item(), rtol=1e-5, atol=1e-4)


def test_prefix_mask_reads_history_both_ways_and_replies_left_to_right(tokenizer):
    model = tiny_model(tokenizer)
    row = D.encode_reply_rows([[500, 600, 700], [800, 900, 1000]], SP, 64, mask="prefix")[0]
    batch = D.collate([row], 0, "prefix")
    batch.pop("labels")
    base = model(**batch).logits
    changed_history = {**batch, "input_ids": batch["input_ids"].clone()}
    changed_history["input_ids"][0, 3] = 1234  # last history token
    out = model(**changed_history).logits
    assert not torch.allclose(out[0, 1], base[0, 1])  # an earlier history token sees it: bidirectional
    changed_reply = {**batch, "input_ids": batch["input_ids"].clone()}
    changed_reply["input_ids"][0, 6] = 1234  # second reply token
    out = model(**changed_reply).logits
    torch.testing.assert_close(out[0, :6], base[0, :6])  # nothing before it sees it: causal
    causal = model(**{k: v for k, v in batch.items() if k != "prefix_lengths"}).logits
    assert not torch.allclose(causal[0, 1], base[0, 1])  # the switch is really plumbed through


# ---- generation ----------------------------------------------------------------------------------


def manual_greedy(model, prompt: D.Prompt, steps: int, special: D.Special, prefix: bool = False):
    """Greedy decoding written out: full recompute each step, generated tokens get the segment of the
    prompt's closing [SEP] (the replying speaker); stops at [SEP]."""
    ids, types = list(prompt.input_ids), list(prompt.token_type_ids)
    speaker, out = types[-1], []
    for _ in range(steps):
        extra = {"prefix_lengths": torch.tensor([len(prompt.input_ids)])} if prefix else {}
        logits = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]), **extra).logits[0, -1]
        logits[[special.cls, special.pad]] = float("-inf")
        token = int(logits.argmax())
        out.append(token)
        if token == special.sep:
            break
        ids.append(token)
        types.append(speaker)
    return out


@pytest.mark.parametrize("family,mask", [("roformer", "causal"), ("roformer", "prefix"), ("gpt2", "causal")])
def test_generate_matches_written_out_greedy_on_a_left_padded_batch(tokenizer, family, mask):
    model = tiny_model(tokenizer, family)
    special = D.Special.of(tokenizer)
    histories = [["今天天气不错", "是啊，出去走走"], ["你好"]]
    options = D.DecodingOptions(max_new_tokens=8, do_sample=False)
    prompts = [D.encode_prompt([D._ids(tokenizer, u) for u in h], special, 64) for h in histories]
    assert prompts[0].token_type_ids[-1] == 0 and prompts[1].token_type_ids[-1] == 1  # the replying speaker
    batch = D.left_padded(prompts, special.pad, mask == "prefix", "cpu")
    for use_cache in (True, False):
        out = model.generate(**batch, **{**D.generation_kwargs(options, special), "use_cache": use_cache})
        new = out[:, batch["input_ids"].shape[1]:]
        for row, prompt in zip(new.tolist(), prompts):
            expected = manual_greedy(model, prompt, 8, special, prefix=mask == "prefix")
            assert row[: len(expected)] == expected, (use_cache, row, expected)


def test_candidates_sampling_ngram_blocking_and_suppressed_tokens(tokenizer):
    model = tiny_model(tokenizer)
    special = D.Special.of(tokenizer)
    histories = [["今天天气不错"], ["你好", "你好呀", "在干嘛"]]
    options = D.DecodingOptions(max_new_tokens=12, do_sample=True, top_k=20, top_p=0.9, temperature=1.3,
                                repetition_penalty=1.2, num_candidates=3)
    torch.manual_seed(1)
    first = D.generate_replies(model, tokenizer, histories, options, max_length=64)
    torch.manual_seed(1)
    again = D.generate_replies(model, tokenizer, histories, options, max_length=64)
    assert first == again and [len(c) for c in first] == [3, 3]
    assert len({r for c in first for r in c}) > 1  # sampling gives different candidates
    # n-gram blocking: greedy on a random model repeats itself; with size 2 no bigram comes twice
    special_ids = D.Special.of(tokenizer)
    prompt = D.left_padded([D.encode_prompt([D._ids(tokenizer, "你好")], special_ids, 64)], 0, False, "cpu")
    for size in (0, 2):
        kwargs = D.generation_kwargs(D.DecodingOptions(max_new_tokens=40, do_sample=False,
                                                       no_repeat_ngram_size=size), special_ids)
        kwargs["eos_token_id"] = None  # keep going: the property is about long outputs
        ids = model.generate(**prompt, **kwargs)[0].tolist()
        bigrams = list(zip(ids, ids[1:]))
        if size == 0:
            assert len(set(bigrams)) < len(bigrams)  # the failure the option is for
        else:
            assert len(set(bigrams)) == len(bigrams)
        assert special.cls not in ids[prompt["input_ids"].shape[1]:] and special.pad not in ids[1:]


def test_join_tokens_spacing():
    assert D.join_tokens(["我", "秒", "的", "lam", "##y", "是", "2", "斤"]) == "我秒的lamy是2斤"
    assert D.join_tokens(["hello", "world", "！", "ok"]) == "hello world！ok"


def test_streamer_writes_the_reply_token_by_token(tokenizer):
    model = tiny_model(tokenizer)
    options = D.DecodingOptions(max_new_tokens=10, do_sample=False)
    stream = io.StringIO()
    pieces = []
    streamer = D.ReplyStreamer(tokenizer, D.Special.of(tokenizer), stream)
    original_write = stream.write
    stream.write = lambda s: (pieces.append(s), original_write(s))[1]
    reply = D.generate_replies(model, tokenizer, [["你好"]], options, max_length=64, streamer=streamer)[0][0]
    assert stream.getvalue() == reply + "\n"
    assert len([p for p in pieces if p and p != "\n"]) > 1  # more than one piece: streamed, not written at the end


def test_chat_loop_keeps_history_and_resets(tokenizer):
    model = tiny_model(tokenizer)
    session = D.ChatSession(model, tokenizer, D.DecodingOptions(max_new_tokens=6, do_sample=False), max_length=64)
    seen = []
    original = D.generate_replies

    def spy(model_, tok, histories, *args, **kwargs):
        seen.append([list(h) for h in histories])
        return original(model_, tok, histories, *args, **kwargs)

    D.generate_replies = spy
    try:
        out = io.StringIO()
        n = D.chat_loop(session, io.StringIO("你好\n\n在干嘛\n/reset\n再见\n"), out)
    finally:
        D.generate_replies = original
    assert n == 3
    assert seen[0] == [["你好"]]
    assert seen[1][0][0] == "你好" and seen[1][0][2] == "在干嘛" and len(seen[1][0]) == 3  # user, bot, user
    assert seen[2] == [["再见"]]  # after /reset
    assert len(session.history) == 2 and "(history cleared)" in out.getvalue()
    assert out.getvalue().count("bot: ") == 3


def test_prompt_cut_keeps_newest_turns_and_room_for_the_reply(tokenizer):
    special = D.Special.of(tokenizer)
    history = [[7] * 10, [8] * 10, [9] * 10]
    prompt = D.encode_prompt(history, special, 25)
    assert prompt.dropped_turns == 1 and prompt.input_ids == [101] + [8] * 10 + [102] + [9] * 10 + [102]
    assert prompt.token_type_ids[-1] == 0  # two turns kept: the reply is speaker 0's
    long = D.encode_prompt([list(range(200, 300))], special, 20)
    assert len(long.input_ids) == 20 and long.input_ids[-2] == 299
    with pytest.raises(ValueError, match="no room"):
        D.generate_replies(tiny_model(tokenizer), tokenizer, [["你好"]], D.DecodingOptions(max_new_tokens=62),
                           max_length=64)


def test_top_k_zero_really_switches_top_k_off(tokenizer, monkeypatch):
    """transformers reads top_k=None as its default 50; 0 must reach generate() as 'no top-k'."""
    from transformers.generation import logits_process

    built = []
    original = logits_process.TopKLogitsWarper.__init__

    def spy(self, top_k, *args, **kwargs):
        built.append(top_k)
        original(self, top_k, *args, **kwargs)

    monkeypatch.setattr(logits_process.TopKLogitsWarper, "__init__", spy)
    model = tiny_model(tokenizer)
    for top_k in (0, 7):
        D.generate_replies(model, tokenizer, [["你好"]], D.DecodingOptions(max_new_tokens=2, top_k=top_k, top_p=0.9),
                           max_length=64)
    assert built == [7]
