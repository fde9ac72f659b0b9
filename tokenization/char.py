"""Char-level WordPiece for Chinese BERT (the bert-base-chinese ``vocab.txt`` scheme).

Every CJK character is its own token, English words and digit runs go through WordPiece. The
tokenizer *is* transformers' Rust-backed ``BertTokenizer`` (BertNormalizer + BertPreTokenizer +
WordPiece, run by the ``tokenizers`` library), so ids and character offsets are those of
``BertTokenizer`` by construction; the tests also check them against the pure-Python
``BertTokenizerLegacy`` on real text. What Suji adds:

- a ``vocab.txt`` path is honoured (transformers 5 silently ignores ``vocab_file=``);
- ``save_pretrained`` writes ``vocab.txt`` next to ``tokenizer.json`` and declares
  ``"tokenizer_class": "BertTokenizer"``, so plain transformers (no Suji) loads the folder;
- the bad-input policy of :mod:`tokenization._base` (counted truncation, long-input error, [UNK]
  counts);
- speed: ``__call__`` without ``return_offsets_mapping`` runs the Rust ``encode_batch_fast`` (no
  offset tracking, same ids) and builds the full encodings only if the result is asked for offsets
  (``char_to_token``, ``word_ids()``...); ``encode_ids`` returns ids only, for pretraining
  corpora. Measured ratios to ``BertTokenizerFast`` are in the README.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from transformers import BertTokenizer
from transformers.tokenization_utils_base import BatchEncoding, PaddingStrategy, TruncationStrategy

from ._base import FastAccountingMixin
from ._io import read_vocab, vocab_to_dict, write_vocab

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _as_vocab_dict(vocab) -> dict[str, int] | None:
    if vocab is None or isinstance(vocab, dict):
        return vocab
    if isinstance(vocab, (str, os.PathLike)):
        return vocab_to_dict(read_vocab(vocab))
    return vocab_to_dict(list(vocab))


class ChineseCharTokenizer(FastAccountingMixin, BertTokenizer):
    """BERT-Chinese char WordPiece tokenizer (a ``BertTokenizer`` with Suji's extras).

    Args:
        vocab: a ``vocab.txt`` path, a token list in id order, or a token -> id dict.
        vocab_file: same as a path in ``vocab`` (the transformers argument name).
        do_lower_case / strip_accents / tokenize_chinese_chars: as ``BertTokenizer``
            (``strip_accents=None`` follows ``do_lower_case``, as in the original BERT).
        model_max_length: positions of the model (512 for BERT-base).
        long_input: ``"error"`` (default) or ``"warn"`` for over-long inputs without truncation.
    """

    is_word_level = False

    def __init__(
        self,
        vocab=None,
        *,
        vocab_file=None,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = 512,
        long_input: str = "error",
        **kwargs,
    ):
        vocab = _as_vocab_dict(vocab if vocab is not None else vocab_file)
        if vocab is None:
            raise ValueError("ChineseCharTokenizer needs a vocabulary (vocab= path, list or dict)")
        super().__init__(
            vocab=vocab,
            do_lower_case=do_lower_case,
            strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars,
            model_max_length=model_max_length,
            **kwargs,
        )
        self._set_long_input(long_input)

    @classmethod
    def from_vocab_file(cls, path, **kwargs) -> "ChineseCharTokenizer":
        return cls(vocab=path, **kwargs)

    # ---- saving: a folder plain transformers can load -------------------------------------

    def save_vocabulary(self, save_directory, filename_prefix=None):
        name = (filename_prefix + "-" if filename_prefix else "") + "vocab.txt"
        return (str(write_vocab(self.vocab_tokens(), Path(save_directory) / name)),)

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        # transformers 5 writes only tokenizer.json; vocab.txt is what bert4keras, older transformers
        # and most Chinese BERT tooling read, so write both.
        files = super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
        return files + self.save_vocabulary(save_directory, filename_prefix)

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = super().save_pretrained(save_directory, *args, **kwargs)
        for name in files:
            if os.path.basename(name).endswith("tokenizer_config.json"):
                _declare_stock_bert(name)
        return files

    # ---- encoding ---------------------------------------------------------------------------

    def _encode_plus(
        self,
        text,
        text_pair=None,
        add_special_tokens=True,
        padding_strategy=PaddingStrategy.DO_NOT_PAD,
        truncation_strategy=TruncationStrategy.DO_NOT_TRUNCATE,
        max_length=None,
        stride=0,
        is_split_into_words=False,
        pad_to_multiple_of=None,
        padding_side=None,
        return_tensors=None,
        return_token_type_ids=None,
        return_attention_mask=None,
        return_overflowing_tokens=False,
        return_special_tokens_mask=False,
        return_offsets_mapping=False,
        return_length=False,
        verbose=True,
        split_special_tokens=None,
        **kwargs,
    ):
        """transformers' batch encoding, minus the offset tracking nobody asked for.

        When offsets are not requested, the Rust ``encode_batch_fast`` (no offsets, same ids) does
        the work and the full encodings (for ``char_to_token``, ``word_ids()``...) are computed only
        if the result is asked for them. Anything unusual goes the regular transformers way.
        """
        args = dict(
            add_special_tokens=add_special_tokens, padding_strategy=padding_strategy,
            truncation_strategy=truncation_strategy, max_length=max_length, stride=stride,
            is_split_into_words=is_split_into_words, pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side, return_tensors=return_tensors, return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask, return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask, return_offsets_mapping=return_offsets_mapping,
            return_length=return_length, verbose=verbose, split_special_tokens=split_special_tokens, **kwargs,
        )
        batched = isinstance(text, (list, tuple))
        if batched and isinstance(text_pair, str):
            return super()._encode_plus(text, text_pair, **args)  # transformers raises the error
        firsts = list(text) if batched else [text]
        pairs = (list(text_pair) if batched else [text_pair]) if text_pair is not None else None
        plain = (
            not (is_split_into_words or return_offsets_mapping or return_overflowing_tokens or kwargs)
            and firsts
            and all(isinstance(t, str) for t in firsts)
            and (pairs is None or (len(pairs) == len(firsts) and all(isinstance(t, str) for t in pairs)))
        )
        if not plain:
            return super()._encode_plus(text, text_pair, **args)

        self.set_truncation_and_padding(
            padding_strategy=padding_strategy, truncation_strategy=truncation_strategy, max_length=max_length,
            stride=stride, pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side,
        )
        split_special_tokens = self.split_special_tokens if split_special_tokens is None else split_special_tokens
        backend = self._tokenizer
        backend.encode_special_tokens = split_special_tokens
        inputs = list(zip(firsts, pairs)) if pairs is not None else firsts
        encodings = backend.encode_batch_fast(inputs, add_special_tokens=add_special_tokens)

        data = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids if return_token_type_ids is not None else "token_type_ids" in self.model_input_names:
            data["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask if return_attention_mask is not None else "attention_mask" in self.model_input_names:
            data["attention_mask"] = [e.attention_mask for e in encodings]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_length:
            data["length"] = [len(e.ids) for e in encodings]
        truncating = truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE
        self._account(
            data["input_ids"],
            add_special_tokens=add_special_tokens,
            truncation_strategy=truncation_strategy,
            truncated_flags=[bool(e.overflowing) for e in encodings] if truncating else (),
        )
        deferred = _DeferredEncodings(backend, inputs, add_special_tokens, split_special_tokens)
        output = BatchEncoding(data, deferred, tensor_type=return_tensors, n_sequences=2 if pairs is not None else 1)
        if not batched and return_tensors is None:
            output = BatchEncoding(
                {key: value[0] if isinstance(value[0], list) else value for key, value in output.items()},
                deferred,
                n_sequences=2 if pairs is not None else 1,
            )
        return output

class _DeferredEncodings(Sequence):
    """The full Rust encodings (with offsets) of a batch, computed on first access.

    Remembers the backend's truncation/padding settings of the call, since transformers changes
    them on every call, and reapplies them for the one deferred ``encode_batch``.
    """

    def __init__(self, backend, inputs, add_special_tokens, split_special_tokens):
        self._backend, self._inputs = backend, inputs
        self._settings = (backend.truncation, backend.padding, add_special_tokens, split_special_tokens)
        self._encodings = None

    def _materialize(self):
        if self._encodings is None:
            backend = self._backend
            truncation, padding, add_special_tokens, split_special_tokens = self._settings
            saved = (backend.truncation, backend.padding, backend.encode_special_tokens)
            try:
                _configure(backend, truncation, padding, split_special_tokens)
                self._encodings = backend.encode_batch(self._inputs, add_special_tokens=add_special_tokens)
            finally:
                _configure(backend, *saved)
        return self._encodings

    def __getitem__(self, index):
        return self._materialize()[index]

    def __len__(self):
        return len(self._inputs)

    def __reduce__(self):  # pickles (datasets, multiprocessing) as the plain list of encodings
        return (list, (list(self._materialize()),))


def _configure(backend, truncation, padding, split_special_tokens):
    if truncation is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(**truncation)
    if padding is None:
        backend.no_padding()
    else:
        backend.enable_padding(**padding)
    backend.encode_special_tokens = split_special_tokens


def _declare_stock_bert(config_path):
    """Rewrite a saved tokenizer_config.json so that it names transformers' own BertTokenizer."""
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    config["tokenizer_class"] = "BertTokenizer"
    for key in ("long_input", "vocab_file"):
        config.pop(key, None)
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


__all__ = ["ChineseCharTokenizer", "SPECIAL_TOKENS"]
