"""Bad-input policy shared by the Suji tokenizers: counted truncation, long-input errors, [UNK] counts.

transformers only logs "Token indices sequence length is longer than..." once and lets an over-long
sequence crash the model later. Suji's tokenizers instead

- raise :class:`SequenceTooLongError` when a model input (special tokens added) is longer than
  ``model_max_length`` and truncation is off (``long_input="warn"`` restores the transformers
  behaviour; ``add_special_tokens=False`` is a raw token stream for packing and is never checked);
- count truncated sequences and warn with the running count (at 1, 10, 100, ... truncations, so a
  training loop is not flooded);
- count [UNK] tokens.

Counts live in ``tokenizer.stats`` (a Counter: texts, tokens, unk_tokens, truncated, too_long).
"""

from __future__ import annotations

import collections
import logging

from transformers.tokenization_utils_base import BatchEncoding, TruncationStrategy

logger = logging.getLogger("tokenization")

# transformers' "unknown" model_max_length (int(1e30)); no limit to enforce then.
_NO_LIMIT = int(1e20)
LONG_INPUT_POLICIES = ("error", "warn")


class SequenceTooLongError(ValueError):
    """A model input longer than ``model_max_length`` with truncation off."""


class SujiTokenizerMixin:
    """Mixed into each tokenizer class before the transformers base class."""

    long_input: str = "error"

    @property
    def stats(self) -> collections.Counter:
        # Lazily created so that transformers' own constructors (which we do not control) need no hook.
        if "_suji_stats" not in self.__dict__:
            self.__dict__["_suji_stats"] = collections.Counter()
        return self.__dict__["_suji_stats"]

    def _set_long_input(self, long_input: str):
        if long_input not in LONG_INPUT_POLICIES:
            raise ValueError(f"long_input must be one of {LONG_INPUT_POLICIES}, not {long_input!r}")
        self.long_input = long_input

    def _account(self, sequences, *, add_special_tokens, truncation_strategy, truncated_flags, raw_lengths=None):
        """Update counters and apply the long-input policy for one call.

        ``sequences``: the produced id lists; ``truncated_flags``: per sequence, whether truncation
        removed tokens; ``raw_lengths``: untruncated lengths when truncation is off.
        """
        stats = self.stats
        unk_id, pad_id = self.unk_token_id, self.pad_token_id
        lengths = []
        for ids in sequences:
            length = len(ids) - (ids.count(pad_id) if pad_id is not None else 0)
            lengths.append(length)
            stats["texts"] += 1
            stats["tokens"] += length
            if unk_id is not None:
                stats["unk_tokens"] += ids.count(unk_id)
        truncating = truncation_strategy not in (None, TruncationStrategy.DO_NOT_TRUNCATE, "do_not_truncate")
        if truncating:
            n = sum(truncated_flags)
            if n:
                self._note_truncations(n, len(sequences))
            return
        limit = self.model_max_length
        if not add_special_tokens or limit is None or limit >= _NO_LIMIT:
            return
        for index, length in enumerate(raw_lengths if raw_lengths is not None else lengths):
            if length > limit:
                message = (
                    f"input {index} of the batch has {length} tokens, more than model_max_length={limit}. "
                    "Pass truncation=True (truncations are counted in tokenizer.stats['truncated']), or "
                    "add_special_tokens=False for a raw token stream to pack."
                )
                if self.long_input == "error":
                    raise SequenceTooLongError(message)
                stats["too_long"] += 1
                logger.warning(message)

    def _note_truncations(self, n: int, batch_size: int):
        before = self.stats["truncated"]
        after = before + n
        self.stats["truncated"] = after
        # Warn when the running count reaches 1, 10, 100, ...: visible, but not once per batch.
        if len(str(after)) > len(str(before)) or before == 0:
            logger.warning(
                "%s: %d of %d sequences in this call were truncated; %d truncated so far "
                "(tokenizer.stats['truncated']).",
                type(self).__name__,
                n,
                batch_size,
                after,
            )

    def count_unknown(self, texts) -> collections.Counter:
        """Which pieces of ``texts`` became [UNK], with counts (to diagnose a vocabulary).

        Uses offsets, so the keys are the original substrings (e.g. an emoji or a rare character).
        """
        unknown = collections.Counter()
        encoded = self(list(texts), add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        for text, ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
            for token_id, (start, end) in zip(ids, offsets):
                if token_id == self.unk_token_id:
                    unknown[text[start:end]] += 1
        return unknown


class FastAccountingMixin(SujiTokenizerMixin):
    """Accounting for Rust-backed tokenizers: one hook around the batch ``_encode_plus``."""

    def _backend_inputs(self, texts):
        """What the Rust backend encodes for ``texts`` (the word tokenizer pre-splits them)."""
        return list(texts)

    def encode_ids(self, texts, *, add_special_tokens: bool = True, max_length: int | None = None) -> list[list[int]]:
        """Token ids of many texts and nothing else (no BatchEncoding, no offsets): pretraining data.

        Same ids as ``__call__``; ``max_length`` truncates from the right keeping the final [SEP],
        exactly like ``truncation=True, max_length=...``, and truncations are counted.
        """
        backend = self.backend_tokenizer
        backend.no_truncation()  # transformers leaves the previous call's settings on the backend
        backend.no_padding()
        backend.encode_special_tokens = self.split_special_tokens
        encodings = backend.encode_batch_fast(self._backend_inputs(texts), add_special_tokens=add_special_tokens)
        sequences = [encoding.ids for encoding in encodings]
        flags = [False] * len(sequences)
        if max_length is not None:
            flags = [len(ids) > max_length for ids in sequences]
            keep = max_length - 1 if add_special_tokens else max_length
            sequences = [
                (ids[:keep] + ids[-1:] if add_special_tokens else ids[:keep]) if cut else ids
                for ids, cut in zip(sequences, flags)
            ]
        self._account(
            sequences,
            add_special_tokens=add_special_tokens,
            truncation_strategy="longest_first" if max_length is not None else None,
            truncated_flags=flags,
        )
        return sequences

    def vocab_tokens(self) -> list[str]:
        """The base vocabulary in id order (what ``vocab.txt`` holds)."""
        vocab = self.backend_tokenizer.get_vocab(with_added_tokens=False)
        tokens = [None] * (max(vocab.values()) + 1)
        for token, index in vocab.items():
            tokens[index] = token
        if None in tokens:
            raise ValueError(f"no token has id {tokens.index(None)} (a duplicated line in the vocab.txt?)")
        return tokens

    def _encode_plus(self, *args, **kwargs):
        text = args[0] if args else kwargs.get("text")
        if isinstance(text, (list, tuple)) and not text and not kwargs.get("is_split_into_words"):
            # transformers raises IndexError on an empty batch; an empty batch is a valid batch.
            empty = {name: [] for name in self.model_input_names}
            return BatchEncoding(empty, tensor_type=kwargs.get("return_tensors"))
        output = super()._encode_plus(*args, **kwargs)
        truncation = kwargs.get("truncation_strategy")
        ids = output["input_ids"]
        if not isinstance(ids, list):  # tensors: count from the Rust encodings instead
            ids = [encoding.ids for encoding in output.encodings]
        elif ids and not isinstance(ids[0], list):  # a single unbatched sequence
            ids = [ids]
        # Rust encodings keep what truncation removed in .overflowing, whatever the caller asked.
        truncating = truncation not in (None, TruncationStrategy.DO_NOT_TRUNCATE)
        flags = [bool(encoding.overflowing) for encoding in output.encodings] if truncating else ()
        self._account(
            ids,
            add_special_tokens=kwargs.get("add_special_tokens", True),
            truncation_strategy=truncation,
            truncated_flags=flags,
        )
        return output
