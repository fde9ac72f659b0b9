"""Word-level tokenizer for WoBERT / RoFormer-style vocabularies (jieba words + BERT chars).

Algorithm (bert4keras' WoBERT tokenizer): segment the text with jieba; a word whose normalized
form (lowercased, accents stripped, as BERT does) is in the vocabulary becomes one token; any
other word falls back to the char-level BERT tokenization (CJK characters one by one, English and
digits through WordPiece). Special tokens written in the text (``[MASK]``) are kept whole.

Design. jieba cannot run inside the Rust ``tokenizers`` pipeline except as a Python callback
(``PreTokenizer.custom``, what transformers' RoFormerTokenizer does). Measured on the CLUE news
corpus that ran at 0.7-0.9 MB/s (0.15 MB/s when each word is cut out of the ``NormalizedString``,
which costs time linear in the document), and a callback cannot be saved. Here Python segments
and splits out-of-vocabulary words into BERT's pieces, joins the pieces with single spaces, and
the Rust side (BertNormalizer without CJK spacing, whitespace split, WordPiece) does the rest,
with transformers' batching, padding, truncation, pairs and tensors. Handing the same pieces over
as pre-split words (``is_pretokenized``) gives the same ids but was 2x slower (every piece is
converted separately). The Rust offsets point into the joined string, so each encoding is wrapped
in a :class:`WordEncoding` that maps them back to the original text and reports jieba word
indices as ``word_ids``: ``offset_mapping``, ``char_to_token``, ``token_to_chars``, ``word_ids()``
etc. all refer to the caller's string.

Saving writes ``vocab.txt``, ``user_dict.txt`` (if any) and ``tokenizer_config.json`` with
``"tokenizer_class": "ChineseWordTokenizer"``, registered with ``AutoTokenizer`` when
``tokenization`` is imported. No ``tokenizer.json`` is written on purpose: without Suji,
transformers would load it as a plain backend that skips jieba and silently gives different ids;
with no ``tokenizer.json`` it fails loudly instead.
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from pathlib import Path

from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import BertTokenizer
from transformers.tokenization_utils_base import BatchEncoding

from ._base import FastAccountingMixin
from ._io import read_vocab, vocab_to_dict, write_vocab
from .words import Segmenter

# CJK ranges of the Rust BertNormalizer (tokenizers/src/normalizers/bert.rs). Note 0x2B920: the
# Rust code starts that block at U+2B920 where Google's Python BERT starts it at U+2B820, so
# U+2B820..U+2B91F are split by BertTokenizerLegacy but not by BertTokenizer(Fast); we follow Rust.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
# Literal characters, so the same class works in Python's re and in the Rust (Onig) regex.
_CJK_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _CJK_RANGES)
# One or more CJK characters as BERT defines them; ``CJK_WORD.fullmatch(word)``: all-CJK word.
CJK_WORD = re.compile(f"[{_CJK_CLASS}]+")


class SegmentationTable(dict):
    """``str.translate`` table: BERT's lowercasing/accent stripping, one character for one.

    jieba must see normalized text (``Café`` and ``cafe`` should segment alike, as in bert4keras'
    WoBERT and transformers' RoFormer, which both lowercase before jieba), but offsets must stay
    those of the original text. Mapping every character to exactly one character gives both: a
    character whose normalized form is not a single character is left unchanged. Entries are
    computed on first sight (``__missing__``) and cached.
    """

    def __init__(self, lowercase: bool, strip_accents: bool):
        super().__init__()
        self.lowercase, self.strip_accents = lowercase, strip_accents

    def __missing__(self, code):
        char = chr(code)
        out = char.lower() if self.lowercase else char
        if len(out) != 1:
            out = char
        if self.strip_accents and not out.isascii():
            base = [c for c in unicodedata.normalize("NFD", out) if unicodedata.category(c) != "Mn"]
            if len(base) == 1:
                out = base[0]
        self[code] = out
        return out

    def __reduce__(self):  # pickle the settings, not the cache
        return (SegmentationTable, (self.lowercase, self.strip_accents))


class WordEncoding:
    """A ``tokenizers.Encoding`` seen through the original text and the jieba words.

    Wraps the Rust encoding of the space-joined pieces. ``offsets`` are character offsets into the
    original text(s) and ``word_ids`` are jieba word indices, both computed on first use. The
    methods transformers' ``BatchEncoding`` calls (``char_to_token``, ``word_to_tokens``, ...) are
    provided; a special or padding token has word id None and offsets (0, 0), as in transformers.
    """

    def __init__(self, encoding, layouts):
        # layouts[sequence] = (pieces, piece_starts, piece_words, word_ends) for sequence 0 (and 1);
        # word_ends is None for caller-split words (their offsets are per word).
        self._encoding = encoding
        self._layouts = layouts
        self._offsets = None
        self._word_ids = None

    # plain pass-through attributes
    ids = property(lambda self: self._encoding.ids)
    type_ids = property(lambda self: self._encoding.type_ids)
    tokens = property(lambda self: self._encoding.tokens)
    attention_mask = property(lambda self: self._encoding.attention_mask)
    special_tokens_mask = property(lambda self: self._encoding.special_tokens_mask)
    sequence_ids = property(lambda self: self._encoding.sequence_ids)
    n_sequences = property(lambda self: self._encoding.n_sequences)

    def __len__(self):
        return len(self._encoding)

    @property
    def overflowing(self):
        return [WordEncoding(encoding, self._layouts) for encoding in self._encoding.overflowing]

    def _resolve(self):
        # The Rust offsets point into the space-joined pieces; find the piece by bisection on the
        # joined starts and move the offset to the piece's place in the original text.
        joined_starts = {}
        offsets, word_ids = [], []
        for (start, end), sequence, special in zip(
            self._encoding.offsets, self._encoding.sequence_ids, self._encoding.special_tokens_mask
        ):
            if sequence is None or special:  # special or padding token
                offsets.append((0, 0))
                word_ids.append(None)
                continue
            pieces, starts, owners, _ = self._layouts[sequence]
            if sequence not in joined_starts:
                joined_starts[sequence] = list(itertools.accumulate((len(p) + 1 for p in pieces), initial=0))
            piece = bisect.bisect_right(joined_starts[sequence], start) - 1
            shift = starts[piece] - joined_starts[sequence][piece]
            offsets.append((start + shift, end + shift))
            word_ids.append(owners[piece])
        self._offsets, self._word_ids = offsets, word_ids

    @property
    def offsets(self):
        if self._offsets is None:
            self._resolve()
        return self._offsets

    @property
    def word_ids(self):
        if self._word_ids is None:
            self._resolve()
        return self._word_ids

    words = word_ids

    def token_to_sequence(self, token_index):
        return self._encoding.token_to_sequence(token_index)

    def token_to_word(self, token_index):
        return self.word_ids[token_index]

    def token_to_chars(self, token_index):
        if self.word_ids[token_index] is None:
            return None
        return self.offsets[token_index]

    def _tokens_of(self, sequence_index):
        sequence_ids = self._encoding.sequence_ids
        return [i for i, s in enumerate(sequence_ids) if s == sequence_index and self.word_ids[i] is not None]

    def word_to_tokens(self, word_index, sequence_index=0):
        hits = [i for i in self._tokens_of(sequence_index) if self.word_ids[i] == word_index]
        return (hits[0], hits[-1] + 1) if hits else None

    def word_to_chars(self, word_index, sequence_index=0):
        ends = self._layouts[sequence_index][3]
        if ends is None:  # caller-split words: characters of the word itself
            tokens = self.word_to_tokens(word_index, sequence_index)
            return (self.offsets[tokens[0]][0], self.offsets[tokens[1] - 1][1]) if tokens else None
        if not 0 <= word_index < len(ends):
            return None
        return (ends[word_index - 1] if word_index else 0, ends[word_index])

    def char_to_token(self, char_pos, sequence_index=0):
        for i in self._tokens_of(sequence_index):
            start, end = self.offsets[i]
            if start <= char_pos < end:
                return i
        return None

    def char_to_word(self, char_pos, sequence_index=0):
        ends = self._layouts[sequence_index][3]
        if ends is None:
            token = self.char_to_token(char_pos, sequence_index)
            return None if token is None else self.word_ids[token]
        word = bisect.bisect_right(ends, char_pos)
        return word if word < len(ends) and char_pos >= 0 else None


class ChineseWordTokenizer(FastAccountingMixin, BertTokenizer):
    """jieba word + BERT char WordPiece tokenizer (WoBERT, RoFormer word+char vocabularies).

    Args:
        vocab: a ``vocab.txt`` path, a token list in id order, or a token -> id dict; words are
            vocabulary entries longer than one character.
        user_dict: jieba user dictionary (path or lines ``word [freq] [tag]``), saved with the
            tokenizer as ``user_dict.txt``.
        segmenter: ``"rjieba"`` (default, fast) or ``"jieba"``.
        hmm: jieba HMM for unseen words; False as in WoBERT/bert4keras and transformers' RoFormer.
        do_lower_case / strip_accents: normalization, as ``BertTokenizer``.
        model_max_length / long_input: see :mod:`tokenization._base`.
    """

    vocab_files_names = {"vocab_file": "vocab.txt", "user_dict_file": "user_dict.txt"}
    is_word_level = True

    def __init__(
        self,
        vocab=None,
        *,
        vocab_file=None,
        user_dict=None,
        user_dict_file=None,
        segmenter: str = "rjieba",
        hmm: bool = False,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        model_max_length: int = 512,
        long_input: str = "error",
        **kwargs,
    ):
        vocab = vocab if vocab is not None else vocab_file
        if isinstance(vocab, (str, Path)):
            vocab = read_vocab(vocab)
        if vocab is None:
            raise ValueError("ChineseWordTokenizer needs a vocabulary (vocab= path, list or dict)")
        vocab = vocab if isinstance(vocab, dict) else vocab_to_dict(list(vocab))
        kwargs.pop("tokenize_chinese_chars", None)  # always on for out-of-vocabulary words
        super().__init__(
            vocab=vocab,
            do_lower_case=do_lower_case,
            strip_accents=strip_accents,
            model_max_length=model_max_length,
            segmenter=segmenter,
            hmm=hmm,
            long_input=long_input,
            **kwargs,
        )
        self._set_long_input(long_input)
        user_dict = user_dict if user_dict is not None else user_dict_file
        self._segmenter = Segmenter(segmenter, hmm=hmm, user_dict=user_dict)
        self._vocab_set = frozenset(vocab)
        # The Rust side sees the pieces joined by spaces: split them again on whitespace only,
        # normalize them (no CJK spacing: a vocabulary word like 北京 must stay whole) and run
        # WordPiece on each piece as it is.
        self._tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=False, strip_accents=strip_accents, lowercase=do_lower_case
        )
        self._tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # Char-level BERT splitting for out-of-vocabulary words that are not pure CJK / ASCII.
        self._oov_splitter = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(f"[{_CJK_CLASS}]"), "isolated"), pre_tokenizers.BertPreTokenizer()]
        )
        self._special_pattern = None
        self._special_key = None
        accents = strip_accents if strip_accents is not None else do_lower_case
        self._segmentation_table = SegmentationTable(do_lower_case, bool(accents))

    # ---- splitting text into pieces --------------------------------------------------------

    def _special_regex(self):
        """Regex of the added/special tokens, kept in sync with ``add_tokens``."""
        added = sorted(self.added_tokens_encoder, key=len, reverse=True)
        if self._special_key != added:
            self._special_key = added
            self._special_pattern = re.compile("(" + "|".join(map(re.escape, added)) + ")") if added else None
        return self._special_pattern

    def _word_pieces(self, word, base, word_index, pieces, starts, owners):
        """Append the pieces of one word (the general case; ``split_text`` inlines the common ones)."""
        if word.isspace():
            return  # BERT drops whitespace; a whitespace piece would become [UNK]
        if len(word) == 1 or self._tokenizer.normalizer.normalize_str(word) in self._vocab_set:
            pieces.append(word)
            starts.append(base)
            owners.append(word_index)
        elif CJK_WORD.fullmatch(word):
            pieces.extend(word)
            starts.extend(range(base, base + len(word)))
            owners.extend([word_index] * len(word))
        elif word.isascii() and word.isalnum():
            pieces.append(word)  # one WordPiece word, as BERT's basic tokenizer would leave it
            starts.append(base)
            owners.append(word_index)
        else:
            for piece, (start, _) in self._oov_splitter.pre_tokenize_str(word):
                pieces.append(piece)
                starts.append(base + start)
                owners.append(word_index)

    def split_text(self, text: str, split_special_tokens: bool = False):
        """Pieces of ``text`` for the WordPiece stage, plus their layout.

        Returns ``(pieces, piece_starts, piece_words, word_ends)``: the pieces (never containing
        whitespace), the character start of each piece in ``text``, the index of the word each
        piece came from, and the end offset of every word (words, including whitespace "words" and
        special tokens, tile the text).
        """
        pieces, starts, owners, ends = [], [], [], []
        pattern = None if split_special_tokens else self._special_regex()
        chunks = pattern.split(text) if pattern else [text]
        vocab, cjk_only, cut = self._vocab_set, CJK_WORD.fullmatch, self._segmenter.cut
        offset = 0
        for chunk_index, chunk in enumerate(chunks):
            if chunk_index % 2 == 1:  # an added/special token: the Rust side recognizes it whole
                pieces.append(chunk)
                starts.append(offset)
                owners.append(len(ends))
                offset += len(chunk)
                ends.append(offset)
                continue
            if not chunk:
                continue
            # jieba sees the normalized chunk; pieces are cut from the original text at the same
            # offsets (the normalization maps one character to one character).
            for word in cut(chunk.translate(self._segmentation_table)):
                size = len(word)
                end = offset + size
                index = len(ends)
                if size == 1:  # the common case: one character
                    if not word.isspace():
                        pieces.append(text[offset])
                        starts.append(offset)
                        owners.append(index)
                elif cjk_only(word):  # CJK word: in the vocabulary, or one token per character
                    if word in vocab:
                        pieces.append(text[offset:end])
                        starts.append(offset)
                        owners.append(index)
                    else:
                        pieces.extend(text[offset:end])
                        starts.extend(range(offset, end))
                        owners.extend([index] * size)
                else:
                    self._word_pieces(text[offset:end], offset, index, pieces, starts, owners)
                ends.append(end)
                offset = end
        return pieces, starts, owners, ends

    def _split_words(self, words):
        """Pieces for input that the caller already split into words (``is_split_into_words``).

        No jieba; each given word is looked up / split like a jieba word. Offsets are relative to
        each word, as transformers defines them for pre-split input, so no word spans are kept.
        """
        pieces, starts, owners = [], [], []
        for index, word in enumerate(words):
            self._word_pieces(word, 0, index, pieces, starts, owners)
        return pieces, starts, owners, None

    # ---- encoding --------------------------------------------------------------------------

    def _backend_inputs(self, texts):
        return [" ".join(self.split_text(text)[0]) for text in texts]

    def _encode_plus(self, text, text_pair=None, **kwargs):
        split_words = kwargs.pop("is_split_into_words", False)
        if split_words:
            batched = bool(text) and isinstance(text[0], (list, tuple))
        else:
            batched = isinstance(text, (list, tuple))
        firsts = list(text) if batched else [text]
        if not firsts:
            return super()._encode_plus([], **kwargs)  # the empty batch
        if text_pair is None and batched and all(isinstance(t, tuple) and len(t) == 2 for t in firsts):
            firsts, seconds = [t[0] for t in firsts], [t[1] for t in firsts]  # [(a, b), ...] pairs
        elif text_pair is not None:
            seconds = list(text_pair) if batched else [text_pair]
            if len(seconds) != len(firsts):
                raise ValueError(f"{len(firsts)} texts but {len(seconds)} text pairs")
        else:
            seconds = None

        split_special = kwargs.get("split_special_tokens") or False
        split = self._split_words if split_words else (lambda t: self.split_text(t, split_special))
        first_split = [split(t) for t in firsts]
        second_split = [split(t) for t in seconds] if seconds is not None else None

        return_tensors = kwargs.pop("return_tensors", None)
        want_offsets = kwargs.pop("return_offsets_mapping", False)
        # Pieces joined by single spaces and split again by the Rust WhitespaceSplit: ~2x faster
        # than passing them as pre-split words (is_pretokenized converts every piece separately).
        output = super()._encode_plus(
            [" ".join(layout[0]) for layout in first_split],
            text_pair=[" ".join(layout[0]) for layout in second_split] if second_split is not None else None,
            return_tensors=None,
            return_offsets_mapping=False,
            **kwargs,
        )
        samples = output.get("overflow_to_sample_mapping") or range(len(firsts))
        encodings = []
        for encoding, sample in zip(output.encodings, samples):
            layouts = [first_split[sample]]
            if second_split is not None:
                layouts.append(second_split[sample])
            encodings.append(WordEncoding(encoding, layouts))
        data = dict(output)
        if want_offsets:
            data["offset_mapping"] = [encoding.offsets for encoding in encodings]
        result = BatchEncoding(data, encodings, tensor_type=return_tensors)
        if not batched and return_tensors is None and not kwargs.get("return_overflowing_tokens"):
            unbatched = {
                key: value[0] if value and isinstance(value[0], list) else value for key, value in result.items()
            }
            result = BatchEncoding(unbatched, encodings)
        return result

    # ---- saving ------------------------------------------------------------------------------

    def save_vocabulary(self, save_directory, filename_prefix=None):
        prefix = filename_prefix + "-" if filename_prefix else ""
        vocab_file = write_vocab(self.vocab_tokens(), Path(save_directory) / f"{prefix}vocab.txt")
        return (str(vocab_file),) + self._segmenter.save_user_dict(save_directory, filename_prefix)

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        # Deliberately no tokenizer.json (see the module docstring).
        return tuple(file_names) + self.save_vocabulary(save_directory, filename_prefix)


__all__ = ["ChineseWordTokenizer", "WordEncoding", "SegmentationTable", "CJK_WORD"]
