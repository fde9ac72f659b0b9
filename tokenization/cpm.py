"""CPM-LM tokenizer: jieba, then spaces -> U+2582 and newlines -> U+2583, then sentencepiece.

CPM (TsinghuaAI/CPM-Generate) cuts the text with jieba, replaces " " by "▂" and "\\n" by "▃" inside
the words, joins the words with spaces and encodes the result with a sentencepiece model; decoding
drops the joining spaces and maps ▂/▃ back, so the original spacing and line breaks survive.

transformers' ``CpmTokenizer`` carries the sentencepiece half (XLNet-style text preprocessing, the
"digits followed by a comma" re-split, special-token layout ``A <sep> B <sep> <cls>``, token types
with 2 for <cls>, padding type 3). In transformers 5.x its jieba step is gone: the slow class never
segments and the fast class's ``_batch_encode_plus`` hook is no longer called (and it cannot be
built from a ``.model`` at all). :class:`ChineseCpmTokenizer` subclasses ``CpmTokenizer`` and puts
the segmentation back in ``_tokenize``, as transformers 4.x did, so every other behaviour is
transformers' own; the tests check ids against ``CpmTokenizer`` fed the segmented text.

Segmentation defaults to rjieba without HMM, what transformers 4.x used last
(``rjieba.cut(text, False)``); the original CPM-Generate code used python jieba with HMM:
``ChineseCpmTokenizer(..., segmenter="jieba", hmm=True)``.

Exact round trip (``decode(encode(x)) == x``) needs a lossless configuration: ``keep_accents=True``
(transformers' default NFKD-folds full-width punctuation such as "，" to ","), ``remove_space=False``
(the default collapses tabs and other whitespace), a sentencepiece model with identity
normalization and byte fallback (what :func:`tokenization.vocab.build_sentencepiece` trains), and
no literal "▂", "▃", "▁" (they decode to space, newline, nothing) or "``"/"''" (CpmTokenizer turns
them into '"') in the text. Decoding uses sentencepiece's own decoder so byte
fallback pieces come back as the original characters.
"""

from __future__ import annotations

import collections
import os

from transformers import CpmTokenizer

from ._base import SujiTokenizerMixin
from .words import Segmenter

SPIECE_UNDERLINE = "\u2581"
CPM_TRANSLATION = str.maketrans(" \n", "\u2582\u2583")


class ChineseCpmTokenizer(SujiTokenizerMixin, CpmTokenizer):
    """CPM-LM tokenizer (jieba + sentencepiece) with transformers' ``CpmTokenizer`` behaviour.

    Args:
        vocab_file: the sentencepiece ``.model``.
        segmenter / hmm / user_dict: jieba engine, HMM and user dictionary (see :class:`Segmenter`).
        do_lower_case / remove_space / keep_accents: ``CpmTokenizer``'s preprocessing.
        model_max_length: 1024 (CPM-LM's positions); long_input: see :mod:`tokenization._base`.
    """

    vocab_files_names = {"vocab_file": "spiece.model", "user_dict_file": "user_dict.txt"}
    is_word_level = False

    def __init__(
        self,
        vocab_file,
        *,
        segmenter: str = "rjieba",
        hmm: bool = False,
        user_dict=None,
        user_dict_file=None,
        model_max_length: int = 1024,
        long_input: str = "error",
        **kwargs,
    ):
        user_dict = user_dict if user_dict is not None else user_dict_file
        self._segmenter = Segmenter(segmenter, hmm=hmm, user_dict=user_dict)
        super().__init__(
            str(vocab_file),
            segmenter=segmenter,
            hmm=hmm,
            model_max_length=model_max_length,
            long_input=long_input,
            **kwargs,
        )
        self._set_long_input(long_input)

    # ---- encoding ------------------------------------------------------------------------------

    def segment(self, text: str) -> str:
        """The text sentencepiece sees: jieba words with ▂/▃ inside, joined by spaces."""
        return " ".join(word.translate(CPM_TRANSLATION) for word in self._segmenter.cut(text))

    def _tokenize(self, text, **kwargs):
        return super()._tokenize(self.segment(text), **kwargs)

    def prepare_for_model(
        self, ids, pair_ids=None, add_special_tokens=True, truncation=False, max_length=None, **kwargs
    ):
        # The one place every sequence passes with its untruncated length: count and police it.
        total = len(ids) + (len(pair_ids) if pair_ids is not None else 0)
        if add_special_tokens:
            total += self.num_special_tokens_to_add(pair=pair_ids is not None)
        output = super().prepare_for_model(
            ids, pair_ids=pair_ids, add_special_tokens=add_special_tokens, truncation=truncation,
            max_length=max_length, **kwargs
        )
        truncating = truncation not in (False, None, "do_not_truncate") and max_length is not None
        produced = output["input_ids"]
        produced = produced.tolist() if hasattr(produced, "tolist") else produced
        self._account(
            [produced[0] if produced and isinstance(produced[0], list) else produced],
            add_special_tokens=add_special_tokens,
            truncation_strategy=truncation if truncating else None,
            truncated_flags=[truncating and total > max_length],
            raw_lengths=[total],
        )
        return output

    def encode_ids(
        self, texts, *, add_special_tokens: bool = True, max_length: int | None = None, num_threads: int | None = None
    ) -> list[list[int]]:
        """Ids of many texts at once (sentencepiece's threaded batch encoder); same ids as ``__call__``.

        Texts containing a special/added token string (``<sep>`` ...) take the regular path so that
        the token is recognized exactly as ``__call__`` does.
        """
        texts = list(texts)
        added = list(self.added_tokens_encoder)
        plain = [i for i, text in enumerate(texts) if not any(token in text for token in added)]
        prepared = [self.preprocess_text(self.segment(texts[i])) for i in plain]
        threads = num_threads or os.cpu_count() or 1
        pieces_batch = self.sp_model.encode(prepared, out_type=str, num_threads=threads)
        results: list[list[int] | None] = [None] * len(texts)
        for i, pieces in zip(plain, pieces_batch):
            results[i] = self.sp_model.piece_to_id(_split_digit_comma(self.sp_model, pieces)) if pieces else []
        for i, ids in enumerate(results):
            if ids is None:
                results[i] = self.convert_tokens_to_ids(self.tokenize(texts[i]))
        sep, cls = [self.sep_token_id], [self.cls_token_id]
        flags = [False] * len(results)
        if max_length is not None:
            budget = max_length - (2 if add_special_tokens else 0)
            flags = [len(ids) > budget for ids in results]
            results = [ids[:budget] for ids in results]
        sequences = [ids + sep + cls for ids in results] if add_special_tokens else results
        self._account(
            sequences,
            add_special_tokens=add_special_tokens,
            truncation_strategy="longest_first" if max_length is not None else None,
            truncated_flags=flags,
        )
        return sequences

    def count_unknown(self, texts):
        """Which pieces of ``texts`` became ``<unk>`` (sentencepiece reports their surface form)."""
        unknown = collections.Counter()
        for text in texts:
            for piece in self.tokenize(text):
                if self._convert_token_to_id_with_added_voc(piece) == self.unk_token_id and piece != self.unk_token:
                    unknown[piece.lstrip(SPIECE_UNDERLINE) or piece] += 1
        return unknown

    # ---- decoding ------------------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens):
        # Runs of ordinary pieces go through sentencepiece's decoder (byte-fallback pieces become
        # characters again); special/added tokens stay literal, as transformers writes them.
        special = set(self.added_tokens_encoder)
        out, run = [], []
        for token in tokens:
            if token in special:
                if run:
                    out.append(self.sp_model.decode_pieces(run))
                    run = []
                out.append(token)
            else:
                run.append(token)
        if run:
            out.append(self.sp_model.decode_pieces(run))
        # No .strip() (transformers strips): CPM's _decode removes every ASCII space anyway, and
        # stripping would also eat a text's own leading/trailing tabs, U+00A0 or U+3000.
        return "".join(out).replace(SPIECE_UNDERLINE, " ")

    # ---- saving --------------------------------------------------------------------------------

    def save_vocabulary(self, save_directory, filename_prefix=None):
        files = tuple(super().save_vocabulary(save_directory, filename_prefix))
        return files + self._segmenter.save_user_dict(save_directory, filename_prefix)


def _split_digit_comma(sp_model, pieces):
    """CpmTokenizer's (XLNet's) re-split of pieces like "▁12," into "▁12" + ","."""
    if not any(len(p) > 1 and p[-1] == "," and p[-2].isdigit() for p in pieces):
        return pieces
    new_pieces = []
    for piece in pieces:
        if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
            cur_pieces = sp_model.EncodeAsPieces(piece[:-1].replace(SPIECE_UNDERLINE, ""))
            if piece[0] != SPIECE_UNDERLINE and cur_pieces[0][0] == SPIECE_UNDERLINE:
                if len(cur_pieces[0]) == 1:
                    cur_pieces = cur_pieces[1:]
                else:
                    cur_pieces[0] = cur_pieces[0][1:]
            cur_pieces.append(piece[-1])
            new_pieces.extend(cur_pieces)
        else:
            new_pieces.append(piece)
    return new_pieces


__all__ = ["ChineseCpmTokenizer", "CPM_TRANSLATION"]
