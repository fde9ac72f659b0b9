"""Multi-turn chit-chat as one language model (DialoGPT-style), after Su Jianlin's
"动手做个DialoGPT：基于LM的生成式多轮对话模型" (kexue.fm, 2020) on LCCC.

The post's design, which this module follows:
- a dialogue u_1 ... u_n becomes one row ``[CLS] u_1 [SEP] u_2 [SEP] ... u_n [SEP]``;
- speakers alternate segment ids (0, 1, 0, ...), so a BERT-family checkpoint's token-type embedding
  tells the model who is talking;
- one left-to-right LM is trained on the whole row, so every reply of a dialogue is trained at once
  (a seq2seq model would need one sample per reply); a BERT-family (MLM-pretrained) checkpoint is
  simply run under a causal mask (bert4keras ``application='lm'``);
- the loss covers the replies u_2 ... u_n (each with its closing [SEP], which teaches where a reply
  ends); the first utterance is context only;
- replies are sampled (the post uses top-k random sampling).

Two choices made here, written down because they differ from the post's code:
- The [SEP] that closes turn i carries the segment id of the *next* speaker. That position is the one
  whose output predicts the first token of turn i+1, so the model is told who speaks next exactly
  where it needs it, and transformers' ``generate()`` — which gives each generated token the segment
  id of the last prompt token — then labels the generated reply with the right speaker with no
  custom generation code. (The post gives [SEP] the closing speaker's id and sets the segment of
  generated tokens by hand.)
- Long dialogues are cut from the oldest turn (the post drops the newest ones): the history nearest to
  the reply matters most. Whole turns are dropped; a reply is never cut. When the newest context turn
  and the reply alone do not fit, the context turn keeps its end; a reply that cannot fit even with one
  context token is skipped and counted.

``mask="prefix"`` is the UniLM-style alternative the post compares against: the history is the
source, attended bidirectionally (as an MLM-pretrained encoder was trained to read), and one reply is
the target, generated left to right (``prefix_lengths`` on ``SujiForCausalLM``: the speakers keep
their own segment ids). It needs one row per reply.

Data: LCCC as distributed by CDial-GPT: text files with one dialogue per line, utterances separated
by TAB, characters separated by single spaces (``rejoin`` removes them: the original spacing between
Latin letters is not recoverable, every character is separated alike); or the JSON file
``{"train": [[utterance, ...], ...], "valid": ..., "test": ...}`` read as ``path#split``.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from transformers.generation.streamers import BaseStreamer

from .readers import DataError

MASKS = ("causal", "prefix")


# ---- reading -------------------------------------------------------------------------------------


def rejoin(utterance: str) -> str:
    """LCCC's space-separated characters -> the utterance as written."""
    return "".join(utterance.split())


def read_dialogues(path, stats: Counter | None = None) -> list[list[str]]:
    """Dialogues (lists of utterances, at least two) from an LCCC text file or ``file.json#split``.

    A dialogue of one utterance has no reply to learn and is skipped and counted in ``stats``
    ("dialogues with one utterance"); an empty utterance is an error naming the file, line and turn.
    """
    stats = stats if stats is not None else Counter()
    path = str(path)
    base, _, split = path.partition("#")
    if not Path(base).is_file():
        raise FileNotFoundError(f"no dialogue file at {base}")
    if base.endswith(".json"):
        raw = _json_dialogues(base, split)
    else:
        if split:
            raise DataError(f"{path}: '#split' is for JSON files only")
        raw = []
        with open(base, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    raw.append((f"{base}:{number}", line.split("\t")))
                else:
                    stats["empty lines"] += 1
    dialogues = []
    for where, turns in raw:
        texts = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, str):
                raise DataError(f"{where} (turn {i + 1}): expected a string, got {type(turn).__name__}")
            text = rejoin(turn)
            if not text:
                raise DataError(f"{where} (turn {i + 1}): empty utterance")
            texts.append(text)
        if len(texts) < 2:
            stats["dialogues with one utterance"] += 1
            continue
        dialogues.append(texts)
    stats["dialogues"] += len(dialogues)
    return dialogues


def _json_dialogues(path: str, split: str):
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if isinstance(data, dict):
        if not split:
            raise DataError(f"{path}: a JSON object of splits; name one as {path}#SPLIT ({', '.join(data)})")
        if split not in data:
            raise DataError(f"{path}: no split {split!r} (has {', '.join(data)})")
        data, where = data[split], f"{path}#{split}"
    else:
        where = path
    if not isinstance(data, list):
        raise DataError(f"{where}: expected a list of dialogues")
    out = []
    for i, turns in enumerate(data):
        if not isinstance(turns, list):
            raise DataError(f"{where} (dialogue {i}): expected a list of utterances")
        out.append((f"{where} (dialogue {i})", turns))
    return out


def read_many(paths: str, stats: Counter | None = None) -> list[list[str]]:
    """Comma-separated dialogue files, concatenated."""
    dialogues = []
    for path in paths.split(","):
        dialogues.extend(read_dialogues(path.strip(), stats))
    return dialogues


# ---- encoding ------------------------------------------------------------------------------------


@dataclass
class Special:
    """The three ids the layout uses (BERT names; a CPM tokenizer maps <cls>/<sep>/<pad>)."""

    cls: int
    sep: int
    pad: int

    @classmethod
    def of(cls, tokenizer) -> "Special":
        ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
        if None in ids:
            raise ValueError(f"{type(tokenizer).__name__} lacks a cls/sep/pad token: the dialogue layout needs "
                             "all three")
        return cls(*ids)


@dataclass
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]
    labels: list[int]  # -100 where no loss
    prefix_length: int = 0  # "prefix" mask: how many leading tokens form the bidirectional history
    dropped_turns: int = 0
    cut_tokens: int = 0  # tokens cut from the start of the oldest kept context turn


def _layout(turn_ids, special: Special, first_speaker: int):
    """[CLS] u_1 [SEP] u_2 [SEP] ...: ids, segment ids (closing [SEP] = next speaker), turn index per token."""
    ids, segments, turn_of = [special.cls], [first_speaker], [-1]
    for i, turn in enumerate(turn_ids):
        speaker = (first_speaker + i) % 2
        ids += list(turn) + [special.sep]
        segments += [speaker] * len(turn) + [1 - speaker]
        turn_of += [i] * (len(turn) + 1)
    return ids, segments, turn_of


def _fit_turns(turn_ids, max_length: int, keep_last: int):
    """Drop whole oldest turns until the layout fits; if only one context turn is left and still too
    long, cut it from its start. Returns (turns, dropped, cut) or None when the last `keep_last` turns
    (the replies that must stay whole) cannot fit with at least one context token."""
    turns = [list(t) for t in turn_ids]
    length = lambda ts: 1 + sum(len(t) + 1 for t in ts)  # noqa: E731
    dropped = 0
    while len(turns) > keep_last + 1 and length(turns) > max_length:
        turns.pop(0)
        dropped += 1
    cut = 0
    if length(turns) > max_length:
        room = max_length - length(turns[1:]) - 1  # tokens of the context turn that fit
        if room < 1:
            return None
        cut = len(turns[0]) - room
        turns[0] = turns[0][cut:]
    return turns, dropped, cut


def encode_dialogue(turn_ids, special: Special, max_length: int, mask: str = "causal") -> Encoded | None:
    """One training row for a whole dialogue (``causal``: loss on turns 2..n) or for its last turn
    given the rest (``prefix``: history bidirectional, loss on the last turn). Speakers are counted
    from the first kept turn. None when the reply cannot fit (the caller counts it)."""
    if mask not in MASKS:
        raise ValueError(f"unknown dialogue mask {mask!r}; expected one of {MASKS}")
    if len(turn_ids) < 2:
        raise ValueError("a dialogue needs at least two turns (a context and a reply)")
    # Under the causal mask the newest turn is the one that must stay whole; older replies may go.
    fitted = _fit_turns(turn_ids, max_length, keep_last=1)
    if fitted is None:
        return None
    turns, dropped, cut = fitted
    ids, segments, turn_of = _layout(turns, special, first_speaker=0)
    if mask == "causal":
        # Replies are every kept turn after the first; a context turn that was cut is never a target.
        labels = [tok if t >= 1 else -100 for tok, t in zip(ids, turn_of)]
        prefix = 0
    else:
        last = len(turns) - 1
        labels = [tok if t == last else -100 for tok, t in zip(ids, turn_of)]
        prefix = turn_of.index(last)
    return Encoded(ids, segments, labels, prefix, dropped, cut)


def encode_reply_rows(turn_ids, special: Special, max_length: int, mask: str) -> list[Encoded | None]:
    """Training rows of one dialogue: one row (causal) or one per reply (prefix)."""
    if mask == "causal":
        return [encode_dialogue(turn_ids, special, max_length, mask)]
    return [encode_dialogue(turn_ids[: k + 1], special, max_length, mask) for k in range(1, len(turn_ids))]


@dataclass
class Prompt:
    input_ids: list[int]
    token_type_ids: list[int]
    dropped_turns: int = 0


def encode_prompt(history_ids, special: Special, max_length: int) -> Prompt:
    """The history as a generation prompt ending with [SEP]; the [SEP]'s segment is the replying
    speaker's, which ``generate()`` repeats for every generated token. Cut from the oldest turn to
    at most ``max_length`` tokens (the caller leaves room for the reply)."""
    if not history_ids:
        raise ValueError("a prompt needs at least one utterance of history")
    turns = [list(t) for t in history_ids]
    dropped = 0
    while len(turns) > 1 and 1 + sum(len(t) + 1 for t in turns) > max_length:
        turns.pop(0)
        dropped += 1
    if 1 + len(turns[0]) + 1 > max_length:  # one long utterance: keep its end
        turns[0] = turns[0][len(turns[0]) - (max_length - 2):]
    ids, segments, _ = _layout(turns, special, first_speaker=0)
    return Prompt(ids, segments, dropped)


def collate(rows: list[Encoded], pad_id: int, mask: str = "causal") -> dict:
    """Right-padded batch: input_ids, attention_mask, token_type_ids, labels (+ prefix_lengths)."""
    width = max(len(r.input_ids) for r in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
        "token_type_ids": torch.zeros(len(rows), width, dtype=torch.long),
        "labels": torch.full((len(rows), width), -100, dtype=torch.long),
    }
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        batch["input_ids"][i, :n] = torch.tensor(r.input_ids)
        batch["attention_mask"][i, :n] = 1
        batch["token_type_ids"][i, :n] = torch.tensor(r.token_type_ids)
        batch["labels"][i, :n] = torch.tensor(r.labels)
    if mask == "prefix":
        batch["prefix_lengths"] = torch.tensor([r.prefix_length for r in rows], dtype=torch.long)
    return batch


# ---- loss and perplexity -------------------------------------------------------------------------


def reply_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood over the labelled (reply) tokens, and their count:
    token t's logits predict token t+1. Summed, not averaged, so counts add up across batches/ranks."""
    shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=-100,
                          reduction="sum")
    return nll, int((targets != -100).sum())


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean NLL per reply token)."""
    return math.exp(nll_sum / tokens) if tokens else float("nan")


@torch.no_grad()
def evaluate_perplexity(model, rows: list[Encoded], pad_id: int, mask: str, batch_size: int = 32) -> dict:
    """Reply perplexity of `rows` (nll_sum and tokens are returned too, for summing across ranks)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll_sum, tokens = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    for start in range(0, len(order), batch_size):
        batch = collate([rows[i] for i in order[start:start + batch_size]], pad_id, mask)
        labels = batch.pop("labels")
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch).logits
        nll, n = reply_nll(logits, labels.to(device))
        nll_sum, tokens = nll_sum + float(nll), tokens + n
    model.train(was_training)
    return {"nll_sum": nll_sum, "tokens": tokens, "perplexity": perplexity(nll_sum, tokens)}


# ---- decoding ------------------------------------------------------------------------------------


@dataclass
class DecodingOptions:
    """Sampling as in the post (top-k), plus top-p, temperature, repetition penalty and n-gram
    blocking, all through transformers' `generate()`; `num_candidates` replies per context."""

    max_new_tokens: int = 32
    do_sample: bool = True
    top_k: int = 5
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_candidates: int = 1


def generation_kwargs(options: DecodingOptions, special: Special, suppress=()) -> dict:
    kwargs = dict(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                  num_return_sequences=options.num_candidates, eos_token_id=special.sep,
                  pad_token_id=special.pad, repetition_penalty=options.repetition_penalty,
                  no_repeat_ngram_size=options.no_repeat_ngram_size or None, use_cache=True)
    if options.do_sample:
        # top_k=0 switches top-k off (None would mean transformers' default of 50)
        kwargs.update(top_k=options.top_k, top_p=options.top_p, temperature=options.temperature)
    else:
        kwargs.update(top_k=None, top_p=None, temperature=None)
    # A reply never contains [CLS]/[PAD] (and [UNK] only echoes noise): never sample them.
    kwargs["suppress_tokens"] = sorted({special.cls, special.pad, *suppress})
    return kwargs


def left_padded(prompts: list[Prompt], pad_id: int, prefix: bool, device) -> dict:
    """A batch of prompts padded on the left (generation appends on the right), with position ids that
    start at 0 on each row's first real token, so padding changes no position."""
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    types = torch.zeros(len(prompts), width, dtype=torch.long)
    attention = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        n = len(p.input_ids)
        ids[i, width - n:] = torch.tensor(p.input_ids)
        types[i, width - n:] = torch.tensor(p.token_type_ids)
        types[i, : width - n] = p.token_type_ids[0]
        attention[i, width - n:] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": attention, "position_ids": positions}
    if prefix:  # the whole prompt is the bidirectional history
        batch["prefix_lengths"] = torch.full((len(prompts),), width, dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}


def join_tokens(tokens: list[str]) -> str:
    """Char-WordPiece tokens -> text: no spaces between Chinese characters, '##' pieces glued to
    their word, one space between two Latin words / numbers."""
    out = ""
    for token in tokens:
        if token.startswith("##"):
            out += token[2:]
        elif out and _latin(out[-1]) and _latin(token[0]):
            out += " " + token
        else:
            out += token
    return out


def _latin(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def decode_reply(tokenizer, ids, special: Special) -> str:
    """Token ids of one generated reply (up to its [SEP]) -> text."""
    ids = [int(i) for i in ids]
    if special.sep in ids:
        ids = ids[: ids.index(special.sep)]
    ids = [i for i in ids if i not in (special.pad, special.cls)]
    if hasattr(tokenizer, "sp_model"):  # sentencepiece (CPM): its own decoder restores spacing
        return tokenizer.decode(ids, skip_special_tokens=True)
    return join_tokens(tokenizer.convert_ids_to_tokens(ids))


class ReplyStreamer(BaseStreamer):
    """Writes a reply to `stream` token by token as `generate()` produces it (batch 1, one candidate).
    The first `put` is the prompt, which is skipped; text stops at the reply's [SEP]. Each piece is
    the difference between the decoding of all reply tokens so far and what was already written, so
    '##' pieces and spacing come out as `decode_reply` gives them."""

    def __init__(self, tokenizer, special: Special, stream=None):
        self.tokenizer, self.special = tokenizer, special
        self.stream = stream if stream is not None else sys.stdout
        self.tokens: list[int] = []
        self.written = ""
        self.prompt_seen = False
        self.finished = False

    def put(self, value):
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("ReplyStreamer streams one reply: batch 1 and one candidate")
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if self.finished:
            return
        for token in value.reshape(-1).tolist():
            if token == self.special.sep:
                self.finished = True
                break
            self.tokens.append(token)
        text = decode_reply(self.tokenizer, self.tokens, self.special)
        if text.startswith(self.written):
            self.stream.write(text[len(self.written):])
            self.written = text
            self.stream.flush()

    def end(self):
        self.stream.write("\n")
        self.stream.flush()


@torch.no_grad()
def generate_replies(model, tokenizer, histories: list[list[str]], options: DecodingOptions, *,
                     max_length: int, mask: str = "causal", streamer=None, suppress=()) -> list[list[str]]:
    """`options.num_candidates` replies for each history (a list of utterances, oldest first). The
    history is cut from its oldest turn to leave room for `max_new_tokens`."""
    special = Special.of(tokenizer)
    budget = max_length - options.max_new_tokens
    if budget < 3:
        raise ValueError(f"max_length {max_length} leaves no room for a prompt after {options.max_new_tokens} "
                         "new tokens")
    prompts = [encode_prompt([_ids(tokenizer, u) for u in history], special, budget) for history in histories]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = left_padded(prompts, special.pad, mask == "prefix", device)
    output = model.generate(**batch, **generation_kwargs(options, special, suppress), streamer=streamer)
    model.train(was_training)
    new = output[:, batch["input_ids"].shape[1]:]
    replies = [decode_reply(tokenizer, row, special) for row in new]
    k = options.num_candidates
    return [replies[i * k:(i + 1) * k] for i in range(len(histories))]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- interactive chat ----------------------------------------------------------------------------


@dataclass
class ChatSession:
    """A conversation kept across turns: each user line and each reply join the history, which the
    prompt cuts from its oldest turn. Commands: '/reset' forgets the history."""

    model: object
    tokenizer: object
    options: DecodingOptions
    max_length: int
    mask: str = "causal"
    history: list[str] = field(default_factory=list)

    def respond(self, user_text: str, stream=None) -> str:
        self.history.append(user_text)
        streamer = None
        if stream is not None and self.options.num_candidates == 1:
            streamer = ReplyStreamer(self.tokenizer, Special.of(self.tokenizer), stream)
        reply = generate_replies(self.model, self.tokenizer, [self.history], self.options,
                                 max_length=self.max_length, mask=self.mask, streamer=streamer)[0][0]
        self.history.append(reply)
        return reply


def chat_loop(session: ChatSession, input_stream, output_stream, prompt: str = "> ") -> int:
    """Read user lines until EOF or '/quit'; stream each reply. Returns the number of replies."""
    replies = 0
    while True:
        output_stream.write(prompt)
        output_stream.flush()
        line = input_stream.readline()
        if not line:
            output_stream.write("\n")
            return replies
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            return replies
        if text == "/reset":
            session.history.clear()
            output_stream.write("(history cleared)\n")
            continue
        output_stream.write("bot: ")
        reply = session.respond(text, stream=output_stream)
        if session.options.num_candidates != 1:  # not streamed
            output_stream.write(reply + "\n")
        replies += 1


def sample_examples(dialogues: list[list[str]], n: int, seed: int) -> list[list[str]]:
    """`n` dialogues chosen by a seeded draw (for the example conversations in a results table)."""
    rng = random.Random(seed)
    return [dialogues[i] for i in sorted(rng.sample(range(len(dialogues)), min(n, len(dialogues))))]


# ---- the recipe's pieces (finetune/dialogue.py wires them to the driver) ---------------------------


def token_ids_of(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of many utterances without special tokens (the fast batch path when the tokenizer has one)."""
    if hasattr(tokenizer, "encode_ids"):
        return tokenizer.encode_ids(texts, add_special_tokens=False)
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def encode_dialogues(tokenizer, dialogues: list[list[str]], max_length: int, mask: str,
                     stats: Counter | None = None) -> list[Encoded]:
    """Training rows of many dialogues; replies that cannot fit are skipped and counted in `stats`
    ("replies too long"), history cuts are counted as "turns dropped" / "context turns cut"."""
    stats = stats if stats is not None else Counter()
    special = Special.of(tokenizer)
    flat = token_ids_of(tokenizer, [u for d in dialogues for u in d])
    rows, at = [], 0
    for dialogue in dialogues:
        turn_ids, at = flat[at:at + len(dialogue)], at + len(dialogue)
        for row in encode_reply_rows(turn_ids, special, max_length, mask):
            if row is None:
                stats["replies too long"] += 1
                continue
            stats["turns dropped"] += row.dropped_turns
            stats["context turns cut"] += row.cut_tokens > 0
            rows.append(row)
    stats["rows"] += len(rows)
    return rows


def predict_dialogues(model, tokenizer, dialogues: list[list[str]], forward, *, max_length: int, mask: str,
                      batch_size: int, options: DecodingOptions, generate_for: int) -> list[dict]:
    """Per dialogue: the summed NLL and count of its reference reply tokens (every reply given its
    history), and for the first `generate_for` dialogues the generated candidates for the last turn
    given the turns before it."""
    special = Special.of(tokenizer)
    flat = token_ids_of(tokenizer, [u for d in dialogues for u in d])
    rows, owner, at = [], [], 0
    for index, dialogue in enumerate(dialogues):
        turn_ids, at = flat[at:at + len(dialogue)], at + len(dialogue)
        for row in encode_reply_rows(turn_ids, special, max_length, mask):
            if row is not None:
                rows.append(row)
                owner.append(index)
    out = [{"nll": 0.0, "tokens": 0, "replies": None} for _ in dialogues]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = collate([rows[i] for i in chosen], special.pad, mask)
            labels = batch.pop("labels")
            logits = forward(batch).logits
            shifted, targets = logits[:, :-1].float(), labels[:, 1:].to(logits.device)
            nll = F.cross_entropy(shifted.transpose(1, 2), targets, ignore_index=-100, reduction="none").sum(-1)
            for j, i in enumerate(chosen):
                out[owner[i]]["nll"] += float(nll[j])
                out[owner[i]]["tokens"] += int((targets[j] != -100).sum())
    todo = list(range(min(generate_for, len(dialogues))))
    for start in range(0, len(todo), batch_size):
        chosen = todo[start:start + batch_size]
        replies = generate_replies(model, tokenizer, [dialogues[i][:-1] for i in chosen], options,
                                   max_length=max_length, mask=mask)
        for i, candidates in zip(chosen, replies):
            out[i]["replies"] = candidates
    return out


def dialogue_counts(dialogues: list[list[str]], predictions: list[dict]) -> Counter:
    """Counts that add up across ranks: NLL and tokens for perplexity; summed sentence BLEU-2/4 of
    the first candidate against the reference last turn; each distinct 1/2-gram of all first
    candidates as its own key (the union over ranks is then the set of keys)."""
    from .text_metrics import bleu, char_tokens, ngrams

    counts = Counter()
    for dialogue, p in zip(dialogues, predictions):
        counts["nll"] += p["nll"]
        counts["reply_tokens"] += p["tokens"]
        if p["replies"] is None:
            continue
        reply, reference = p["replies"][0], dialogue[-1]
        counts["generated"] += 1
        counts["bleu-2"] += bleu(reply, reference, weights=(0.5, 0.5))
        counts["bleu-4"] += bleu(reply, reference, weights=(0.25,) * 4)
        counts["reply_chars"] += len(char_tokens(reply))
        for n in (1, 2):
            for gram, c in ngrams(char_tokens(reply), n).items():
                counts[(f"distinct-{n}", gram)] += c
    return counts


def dialogue_scores(counts: Counter) -> dict:
    """Perplexity of the reference replies; mean sentence BLEU-2/4 (%); distinct-1/2 of the generated
    replies (distinct n-grams over all n-grams, %); mean generated length in characters."""
    scores = {"perplexity": perplexity(counts["nll"], counts["reply_tokens"]),
              "reply_tokens": counts["reply_tokens"], "generated": counts["generated"]}
    if counts["generated"]:
        g = counts["generated"]
        scores["bleu-2"] = 100 * counts["bleu-2"] / g
        scores["bleu-4"] = 100 * counts["bleu-4"] / g
        scores["reply_length"] = counts["reply_chars"] / g
        for n in (1, 2):
            grams = [c for k, c in counts.items() if isinstance(k, tuple) and k[0] == f"distinct-{n}"]
            scores[f"distinct-{n}"] = 100 * len(grams) / sum(grams) if grams else 0.0
    return scores


def read_histories(path) -> list[list[str]]:
    """Histories to reply to (`--predict`): one per line, utterances TAB-separated (LCCC spacing is
    removed); a single utterance is a valid history."""
    histories = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            turns = [rejoin(u) for u in line.split("\t")]
            if not all(turns):
                raise DataError(f"{path}:{number} (turn {turns.index('') + 1}): empty utterance")
            histories.append(turns)
    return histories
