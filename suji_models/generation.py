"""What transformers' `generate()` lacks for Suji's tasks, written as LogitsProcessors (and small
helpers around them): each one is a switch on an ordinary `generate()` call, with its own test."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor


# ---- reading comprehension: answers that are pieces of the passage ------------------------------
# From "万能的seq2seq：基于seq2seq的阅读理解问答": the answer is generated token by token, but only
# tokens that keep it a substring of the passage are allowed (a constraint on every step, not a
# filter after decoding); [SEP] may end it at any step, and [SEP] first means "no answer".


class PassageSubstringLogitsProcessor(LogitsProcessor):
    """Every next token keeps the answer generated so far (the tokens after `prompt_length`) a
    contiguous piece of its row's passage; the end token is always allowed (an empty answer is
    "no answer"; `allow_empty=False` forbids it as the first token when the passage is not empty).

    `passages[b]`: the passage token ids of batch item b (rows b*num_beams ... of beam search).
    Scores come back as log-probabilities (log_softmax, then -inf outside the passage), not
    renormalized: what a passage does not allow is probability it loses, so
    :class:`PassageVoteLogitsProcessor` can compare passages after it."""

    def __init__(self, passages, prompt_length: int, eos_token_id: int, num_beams: int = 1, allow_empty: bool = True):
        self.passages = [list(map(int, p)) for p in passages]
        self.prompt_length = prompt_length
        self.eos_token_id = eos_token_id
        self.num_beams = num_beams
        self.allow_empty = allow_empty
        self._starts = [self._positions(p) for p in self.passages]

    @staticmethod
    def _positions(passage) -> dict:
        where: dict = {}
        for i, token in enumerate(passage):
            where.setdefault(token, []).append(i)
        return where

    def allowed(self, item: int, answer) -> set:
        """Tokens allowed after `answer` (a token list) for batch item `item`."""
        passage, answer = self.passages[item], list(answer)
        if self.eos_token_id in answer:  # finished rows (greedy keeps scoring them): only the end again
            return {self.eos_token_id}
        if not answer:
            allowed = set(passage)
            if self.allow_empty or not allowed:
                allowed.add(self.eos_token_id)
            return allowed
        k = len(answer)
        allowed = {passage[i + k] for i in self._starts[item].get(answer[0], ())
                   if i + k < len(passage) and passage[i:i + k] == answer}
        allowed.add(self.eos_token_id)
        return allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float().log_softmax(-1)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        generated = input_ids[:, self.prompt_length:].tolist()
        for row, answer in enumerate(generated):
            keep[row, sorted(self.allowed(row // self.num_beams, answer))] = True
        return scores.masked_fill(~keep, float("-inf"))


class PassageVoteLogitsProcessor(LogitsProcessor):
    """Several passages (or windows of one long passage) of the same question answer together, as
    in "万能的seq2seq：基于seq2seq的阅读理解问答": batch items with the same `groups[b]` get, at every
    step, the same next-token distribution, the vote of their own distributions. Passages whose most
    probable first token is the end token say "no answer" and do not vote afterwards; when all of a
    question's passages say so, the answer is empty.

    `how`: 'mean' (the post: the average of the passages' probabilities) or 'squared' (the
    bert4keras example's weighting, sum(p^2) / (sum(p) + 1), which favours confident passages).
    With `always_answer` (data where every question has an answer, e.g. CMRC2018), a question whose
    passages all say "no answer" is answered anyway: then all of them vote, and the first token is
    never the end token.

    The scores given must be log-probabilities (beam search's, or those of
    :class:`PassageSubstringLogitsProcessor` placed before this one). Since all items of a group see
    the same scores, their beams stay identical; read the answer from any item of the group."""

    def __init__(self, groups, prompt_length: int, eos_token_id: int, num_beams: int = 1, how: str = "mean",
                 always_answer: bool = False):
        if how not in ("mean", "squared"):
            raise ValueError(f"unknown vote {how!r}: mean or squared")
        self.groups = torch.as_tensor(groups)
        self.prompt_length = prompt_length
        self.eos_token_id = eos_token_id
        self.num_beams = num_beams
        self.how = how
        self.always_answer = always_answer
        self.silent = torch.zeros(len(groups), dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, vocab = len(self.groups), scores.shape[-1]
        log_probs = scores.float().view(batch, self.num_beams, vocab)
        first = input_ids.shape[1] == self.prompt_length
        if first:  # first answer token: who answers at all
            self.silent = log_probs[:, 0].argmax(-1).cpu() == self.eos_token_id
        voted = torch.empty_like(log_probs)  # computed in log space (log of exact zeros is slow on CPU)
        for group in self.groups.unique():
            members = (self.groups == group).nonzero().view(-1)
            voters = members[~self.silent[members]]
            if len(voters) == 0 and self.always_answer:
                self.silent[members] = False
                voters = members
            if len(voters) == 0:
                only_end = torch.full((self.num_beams, vocab), float("-inf"), device=log_probs.device)
                only_end[:, self.eos_token_id] = 0.0
                voted[members] = only_end
                continue
            s = log_probs[voters.to(log_probs.device)]
            if self.how == "mean":  # log(mean p)
                voted[members] = torch.logsumexp(s, 0) - math.log(len(voters))
            else:  # log(sum p^2 / (sum p + 1))
                voted[members] = torch.logsumexp(2 * s, 0) - F.softplus(torch.logsumexp(s, 0))
        if first and self.always_answer:
            voted[..., self.eos_token_id] = float("-inf")
        return voted.view(-1, vocab).to(scores.dtype)


# ---- summarization: copy spans, n-gram blocking on the target, Sparse Softmax ---------------------
# From "SPACES：“抽取-生成”式长文本摘要（法研杯总结）": besides the next token, the model tags it O
# (generated freely), B (starts copying a source span) or I (continues the span). At decoding, a B
# token must be a source token and an I token must extend the tokens since the last B to a longer
# n-gram of the source; the tag is the model's own prediction for the step.


class CopySpanLogitsProcessor(LogitsProcessor):
    """Copy constraint of SPACES on each step of `generate()` (greedy or beam search).

    `sources[b]`: the token ids batch item b may copy from (rows b*num_beams ... in beam search).
    `tags_of_step()`: the O/B/I tag (0/1/2) of the token about to be chosen, one per row, or their
    logits [rows, 3] (e.g. ``lambda: model.last_copy_logits``, which the model sets in each forward).
    A B with no source token, or an I with nothing that extends its span (or no span to extend:
    then it starts one, as a B), degrades to the next weaker tag; so does a tag whose tokens an earlier
    processor has all ruled out (score -inf: n-gram blocking, a top-k), so that no row is left with
    nothing to choose. :meth:`effective_tags` says which tag each generated token was given. Each
    hypothesis's state is keyed by its tokens, so beams that are reordered, dropped or duplicated keep
    their own spans."""

    def __init__(self, sources, prompt_length: int, tags_of_step, num_beams: int = 1, eos_token_id: int | None = None):
        self.sources = [list(map(int, s)) for s in sources]
        self.prompt_length = prompt_length
        self.tags_of_step = tags_of_step
        self.num_beams = num_beams
        self.eos_token_id = eos_token_id
        self._decided: dict = {}  # (item, generated tokens) -> tag given to the next token

    def _span(self, item: int, generated: tuple) -> tuple | None:
        """The copied span the last generated token ends (None if it was generated freely)."""
        start = None
        for t in range(len(generated)):
            tag = self._decided.get((item, generated[:t]), 0)
            start = None if tag == 0 else (t if tag == 1 or start is None else start)
        return None if start is None else generated[start:]

    def continuations(self, item: int, span: tuple) -> set:
        source, k = self.sources[item], len(span)
        return {source[i + k] for i in range(len(source) - k) if tuple(source[i:i + k]) == span}

    def effective_tags(self, item: int, generated) -> list[int]:
        generated = tuple(map(int, generated))
        return [self._decided.get((item, generated[:t]), 0) for t in range(len(generated))]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tags = self.tags_of_step()
        tags = (tags.argmax(-1) if tags.dim() == 2 else tags).tolist()
        keep = torch.ones_like(scores, dtype=torch.bool)
        open_ = torch.isfinite(scores)
        for row, generated in enumerate(input_ids[:, self.prompt_length:].tolist()):
            item, generated = row // self.num_beams, tuple(generated)
            if self.eos_token_id is not None and self.eos_token_id in generated:
                continue  # a finished row (greedy keeps feeding it): nothing to constrain
            tag, allowed = tags[row], None
            candidates = set(open_[row].nonzero().view(-1).tolist())
            if tag == 2:
                span = self._span(item, generated)
                allowed = self.continuations(item, span) & candidates if span is not None else set()
                if not allowed:
                    tag = 1
            if tag == 1:
                allowed = set(self.sources[item]) & candidates
                if not allowed:
                    tag = 0
            self._decided[(item, generated)] = tag
            if tag:
                keep[row] = False
                keep[row, sorted(allowed)] = True
        return scores.masked_fill(~keep, float("-inf"))


class TargetNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """n-gram blocking on the generated part only. transformers' `no_repeat_ngram_size` looks at the
    whole `input_ids`, which for UniLM include the source: it would forbid copying any source n-gram,
    the very thing a summary does. Here an n-gram may not appear twice in what was generated."""

    def __init__(self, ngram_size: int, prompt_length: int):
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        self.n = ngram_size
        self.prompt_length = prompt_length

    def banned(self, generated) -> set:
        n, generated = self.n, list(generated)
        if len(generated) < n - 1:
            return set()
        prefix = tuple(generated[len(generated) - n + 1:]) if n > 1 else ()
        return {generated[i + n - 1] for i in range(len(generated) - n + 1)
                if tuple(generated[i:i + n - 1]) == prefix}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, generated in enumerate(input_ids[:, self.prompt_length:].tolist()):
            banned = self.banned(generated)
            if banned:
                scores[row, sorted(banned)] = float("-inf")
        return scores


class SparseSoftmaxLogitsProcessor(LogitsProcessor):
    """Decoding with the distribution Sparse Softmax trains (see `losses.sparse_softmax`): the log of
    the softmax over the top-k scores, -inf elsewhere. Beam search adds these log-probabilities over
    steps, so each step is renormalized over its own top k."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from .losses import sparse_softmax

        return sparse_softmax(scores, self.k, log=True).to(scores.dtype)
