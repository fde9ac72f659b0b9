"""Vocabulary tools: build char / word+char vocabularies and CPM sentencepiece models from a corpus,
and prune a vocabulary to the tokens a corpus uses (bert4keras' ``keep_tokens``).

Every builder takes corpus ``sources`` as :func:`tokenization._io.iter_texts` does: files or
directories of ``*.txt`` (one text per line), ``*.jsonl`` (``field`` names the text) or ``*.tsv``
(``field`` names the column). Also a command line::

    python -m tokenization.vocab char  CORPUS... -o vocab.txt [--vocab-size 21128] [--field content]
    python -m tokenization.vocab word  CORPUS... -o vocab.txt [--char-vocab vocab.txt] [--num-words 20000]
    python -m tokenization.vocab spm   CORPUS... -o tokenizer_dir [--vocab-size 30000]
    python -m tokenization.vocab keep  TOKENIZER CORPUS... -o pruned_dir   (writes keep_ids.json too)

Pruning the model side (``prune_embedding_rows`` / ``prune_state_dict``) works on plain tensors and
id lists, so it never needs a model class from this package.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from ._io import ReadStats, batched, iter_texts, read_vocab, write_vocab
from .char import ChineseCharTokenizer
from .cpm import CPM_TRANSLATION, ChineseCpmTokenizer
from .word import CJK_WORD, ChineseWordTokenizer, SegmentationTable
from .words import Segmenter

logger = logging.getLogger("tokenization")

CHAR_SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[MASK]")
CPM_CONTROL_SYMBOLS = ("<pad>", "<sep>", "<cls>", "<mask>", "<eod>", "<eop>")


def _texts(sources, texts, field, errors, max_texts, stats):
    """The corpus: ``sources`` (paths, read by iter_texts) or ``texts`` (strings), exactly one."""
    if (sources is None) == (texts is None):
        raise ValueError("give corpus files as sources=... or in-memory strings as texts=..., not both")
    if sources is not None:
        return iter_texts(sources, field=field, errors=errors, stats=stats, max_texts=max_texts)
    return (text for i, text in enumerate(texts) if max_texts is None or i < max_texts)


# ---- char WordPiece --------------------------------------------------------------------------


def build_char_vocab(
    sources=None,
    *,
    texts: Iterable[str] | None = None,
    vocab_size: int = 21128,
    min_frequency: int = 2,
    num_unused: int = 99,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    limit_alphabet: int | None = None,
    field: str | None = None,
    errors: str = "strict",
    max_texts: int | None = None,
    stats: ReadStats | None = None,
) -> list[str]:
    """A bert-base-chinese style ``vocab.txt`` token list learned from a corpus.

    Layout as Google's Chinese BERT: ``[PAD]``, ``[unused1..num_unused]``, ``[UNK]``, ``[CLS]``,
    ``[SEP]``, ``[MASK]`` (ids 0, 1-99, 100-103 with the defaults), then every character seen
    (all CJK characters, punctuation, letters; ``limit_alphabet`` keeps only the most frequent),
    then WordPiece merges for English/digit words (pairs seen at least ``min_frequency`` times)
    until ``vocab_size``. Trained by the Rust ``tokenizers`` WordPiece trainer with the very
    normalizer/pre-tokenizer of :class:`ChineseCharTokenizer`.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(1, num_unused + 1)] + list(CHAR_SPECIALS)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        limit_alphabet=limit_alphabet if limit_alphabet is not None else 10**7,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    corpus = _texts(sources, texts, field, errors, max_texts, stats)
    tokenizer.train_from_iterator(batched(corpus, 1000), trainer=trainer)
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    return tokens


# ---- word + char (WoBERT) ----------------------------------------------------------------------


def count_words(
    sources=None,
    *,
    texts: Iterable[str] | None = None,
    segmenter: Segmenter | None = None,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    field: str | None = None,
    errors: str = "strict",
    max_texts: int | None = None,
    stats: ReadStats | None = None,
) -> collections.Counter:
    """Frequencies of multi-character, all-CJK jieba words, segmented as ChineseWordTokenizer does."""
    segmenter = segmenter or Segmenter("rjieba", hmm=False)
    accents = strip_accents if strip_accents is not None else lowercase
    table = SegmentationTable(lowercase, bool(accents))
    counts = collections.Counter()
    for text in _texts(sources, texts, field, errors, max_texts, stats):
        counts.update(w for w in segmenter.cut(text.translate(table)) if len(w) > 1 and CJK_WORD.fullmatch(w))
    return counts


def build_word_vocab(
    sources=None,
    *,
    texts: Sequence[str] | None = None,
    char_vocab=None,
    num_words: int = 20000,
    min_frequency: int = 5,
    segmenter: Segmenter | None = None,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    field: str | None = None,
    errors: str = "strict",
    max_texts: int | None = None,
    **char_options,
) -> list[str]:
    """WoBERT-style vocabulary: a char vocabulary plus the most frequent jieba words, appended.

    Words keep the char vocabulary's ids unchanged (as WoBERT extended RoBERTa-wwm's vocab), so a
    char-level checkpoint can be extended: new rows go at the end. ``char_vocab`` is a token list
    or ``vocab.txt`` path; without it one is built from the same corpus (``char_options`` go to
    :func:`build_char_vocab`). Segmentation uses jieba without HMM (WoBERT's setting) unless a
    :class:`Segmenter` is given.
    """
    if texts is not None and not isinstance(texts, (list, tuple)):
        texts = list(texts)  # read twice: characters, then words
    if char_vocab is None:
        char_vocab = build_char_vocab(
            sources, texts=texts, field=field, errors=errors, max_texts=max_texts, lowercase=lowercase,
            strip_accents=strip_accents, **char_options
        )
    elif isinstance(char_vocab, (str, Path)):
        char_vocab = read_vocab(char_vocab)
    counts = count_words(
        sources, texts=texts, segmenter=segmenter, lowercase=lowercase, strip_accents=strip_accents,
        field=field, errors=errors, max_texts=max_texts,
    )
    present = set(char_vocab)
    words = [w for w, n in counts.most_common() if n >= min_frequency and w not in present][:num_words]
    return list(char_vocab) + words


# ---- sentencepiece (CPM) -----------------------------------------------------------------------


def build_sentencepiece(
    sources,
    output_dir,
    *,
    texts: Iterable[str] | None = None,
    vocab_size: int = 30000,
    model_type: str = "unigram",
    segmenter: Segmenter | None = None,
    character_coverage: float = 0.9995,
    byte_fallback: bool = True,
    max_sentences: int = 2_000_000,
    num_threads: int | None = None,
    field: str | None = None,
    errors: str = "strict",
    max_texts: int | None = None,
) -> Path:
    """Train a CPM-style sentencepiece model and save a ready tokenizer folder; returns the folder.

    The model sees exactly what :class:`ChineseCpmTokenizer` feeds it (jieba words with ▂/▃, joined
    by spaces). Identity normalization, no whitespace collapsing and byte fallback make the
    round trip lossless; the folder's tokenizer_config.json sets ``keep_accents=True`` and
    ``remove_space=False`` for the same reason. Specials: ``<unk>``=0, ``<s>``=1, ``</s>``=2, then
    control symbols ``<pad> <sep> <cls> <mask> <eod> <eop>`` (CpmTokenizer's special tokens).
    """
    import sentencepiece as spm

    segmenter = segmenter or Segmenter("rjieba", hmm=False)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    def segmented():
        for text in _texts(sources, texts, field, errors, max_texts, None):
            yield " ".join(word.translate(CPM_TRANSLATION) for word in segmenter.cut(text))

    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "spiece")
        spm.SentencePieceTrainer.train(
            sentence_iterator=segmented(),
            model_prefix=prefix,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a small corpus gives a smaller vocabulary instead of an error
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            control_symbols=list(CPM_CONTROL_SYMBOLS),
            user_defined_symbols=["\u2582", "\u2583"],
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=1 << 16,  # whole documents per line; the default 4192 bytes drops them
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
        tokenizer = ChineseCpmTokenizer(
            prefix + ".model",
            segmenter=segmenter.engine,
            hmm=segmenter.hmm,
            user_dict=segmenter.user_dict_lines(),
            keep_accents=True,
            remove_space=False,
        )
        tokenizer.save_pretrained(output_dir)
    return output_dir


# ---- keep_tokens: pruning a vocabulary to a corpus ---------------------------------------------


def corpus_token_counts(
    tokenizer, sources=None, *, texts=None, field=None, errors="strict", max_texts=None, batch_size=1000
) -> collections.Counter:
    """How often each token id occurs when ``tokenizer`` encodes the corpus (no special tokens)."""
    counts = collections.Counter()
    for batch in batched(_texts(sources, texts, field, errors, max_texts, None), batch_size):
        if hasattr(tokenizer, "encode_ids"):
            sequences = tokenizer.encode_ids(batch, add_special_tokens=False)
        else:
            sequences = tokenizer(batch, add_special_tokens=False, truncation=False)["input_ids"]
        for ids in sequences:
            counts.update(ids)
    return counts


def keep_tokens_from_corpus(
    tokenizer,
    sources=None,
    *,
    texts: Iterable[str] | None = None,
    min_count: int = 1,
    keep: Iterable[str] = (),
    keep_unused: int = 0,
    field: str | None = None,
    errors: str = "strict",
    max_texts: int | None = None,
) -> list[int]:
    """Old ids to keep, ascending: special tokens, ``keep``, ``[unused1..keep_unused]``, and every
    token the corpus produces at least ``min_count`` times. Feed it to :func:`prune_tokenizer` and
    :func:`prune_state_dict` (bert4keras' ``keep_tokens``)."""
    counts = corpus_token_counts(tokenizer, sources, texts=texts, field=field, errors=errors, max_texts=max_texts)
    vocab = tokenizer.get_vocab()
    kept = {i for i, n in counts.items() if n >= min_count}
    kept.update(tokenizer.all_special_ids)
    for token in list(keep) + [f"[unused{i}]" for i in range(1, keep_unused + 1)]:
        if token not in vocab:
            raise KeyError(f"token to keep {token!r} is not in the vocabulary")
        kept.add(vocab[token])
    return sorted(kept)


def reachable_tokens(
    tokens: Sequence[str], keep: Iterable[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
) -> list[int]:
    """bert4keras' ``load_vocab(simplified=True)`` for char vocabularies: ids of the tokens a char
    WordPiece tokenizer can produce at all. Dropped: ``[...]`` entries other than ``keep``, and
    multi-character tokens whose stem holds a CJK or punctuation character (CJK characters and
    punctuation are always split off, so e.g. ``##的`` can never appear)."""
    from transformers.models.bert.tokenization_bert_legacy import _is_punctuation

    keep = set(keep)
    ids = []
    for index, token in enumerate(tokens):
        if token in keep:
            ids.append(index)
            continue
        if len(token) > 1 and token.startswith("[") and token.endswith("]"):
            continue
        stem = token[2:] if token.startswith("##") and len(token) > 2 else token
        if len(token) > 1 and any(CJK_WORD.fullmatch(c) or _is_punctuation(c) for c in stem):
            continue
        ids.append(index)
    return ids


def prune_tokenizer(tokenizer, keep_ids: Sequence[int]):
    """A tokenizer of the same kind and settings whose vocabulary is ``keep_ids`` (old ids, ascending)."""
    if list(keep_ids) != sorted(set(keep_ids)):
        raise ValueError("keep_ids must be ascending and unique")
    if isinstance(tokenizer, ChineseCpmTokenizer):
        raise NotImplementedError("pruning a sentencepiece vocabulary is not supported; build a smaller model")
    old = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    by_id = {index: token for token, index in old.items()}
    tokens = [by_id[i] for i in keep_ids]
    common = dict(
        do_lower_case=tokenizer.do_lower_case,
        strip_accents=tokenizer.strip_accents,
        model_max_length=tokenizer.model_max_length,
        long_input=tokenizer.long_input,
    )
    if isinstance(tokenizer, ChineseWordTokenizer):
        segmenter = tokenizer._segmenter
        return ChineseWordTokenizer(
            tokens, segmenter=segmenter.engine, hmm=segmenter.hmm, user_dict=segmenter.user_dict_lines(), **common
        )
    return ChineseCharTokenizer(tokens, tokenize_chinese_chars=tokenizer.tokenize_chinese_chars, **common)


def prune_embedding_rows(tensor, keep_ids: Sequence[int]):
    """Rows ``keep_ids`` of an embedding / output matrix or bias (dim 0 is the vocabulary)."""
    import torch

    index = torch.as_tensor(list(keep_ids), dtype=torch.long, device=tensor.device)
    return tensor.index_select(0, index).clone()


def prune_state_dict(state_dict, keep_ids: Sequence[int], vocab_size: int, keys: Iterable[str] | None = None):
    """Slice every vocabulary-sized tensor of ``state_dict`` to ``keep_ids``.

    With ``keys=None`` the tensors whose first dimension equals ``vocab_size`` are sliced (word
    embeddings, MLM decoder weight and bias, an LM head); pass ``keys`` to choose explicitly.
    Returns ``(new_state_dict, sliced_keys)``; the input is not modified.
    """
    if max(keep_ids) >= vocab_size:
        raise ValueError(f"keep id {max(keep_ids)} is outside the vocabulary of {vocab_size}")
    chosen = set(keys) if keys is not None else {
        k for k, v in state_dict.items() if getattr(v, "ndim", 0) >= 1 and v.shape[0] == vocab_size
    }
    if not chosen:
        raise ValueError(f"no tensor in the state dict has a first dimension of {vocab_size}")
    new = {k: prune_embedding_rows(v, keep_ids) if k in chosen else v for k, v in state_dict.items()}
    return new, sorted(chosen)


# ---- command line ------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tokenization.vocab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def corpus_args(p):
        p.add_argument("corpus", nargs="+", help="files or directories (*.txt, *.jsonl, *.tsv)")
        p.add_argument("--field", help="JSONL key / TSV column holding the text")
        p.add_argument(
            "--skip-bad-lines", action="store_true", help="skip and count undecodable lines instead of failing"
        )
        p.add_argument("--max-texts", type=int)

    p = sub.add_parser("char", help="char WordPiece vocab.txt")
    corpus_args(p)
    p.add_argument("-o", "--output", required=True, help="vocab.txt path, or a directory for a saved tokenizer")
    p.add_argument("--vocab-size", type=int, default=21128)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--num-unused", type=int, default=99)
    p.add_argument("--cased", action="store_true", help="keep case and accents")

    p = sub.add_parser("word", help="word+char (WoBERT) vocab.txt")
    corpus_args(p)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--char-vocab", help="existing char vocab.txt to extend (default: build one)")
    p.add_argument("--num-words", type=int, default=20000)
    p.add_argument("--min-frequency", type=int, default=5)
    p.add_argument("--user-dict", help="jieba user dictionary")
    p.add_argument("--segmenter", default="rjieba", choices=["rjieba", "jieba"])

    p = sub.add_parser("spm", help="CPM sentencepiece model + tokenizer folder")
    corpus_args(p)
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--vocab-size", type=int, default=30000)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--segmenter", default="rjieba", choices=["rjieba", "jieba"])
    p.add_argument("--hmm", action="store_true")

    p = sub.add_parser("keep", help="prune a tokenizer to the tokens a corpus uses (keep_tokens)")
    p.add_argument("tokenizer", help="tokenizer directory or vocab.txt")
    corpus_args(p)
    p.add_argument("-o", "--output", required=True, help="directory for the pruned tokenizer and keep_ids.json")
    p.add_argument("--min-count", type=int, default=1)
    p.add_argument("--keep-unused", type=int, default=0)

    args = parser.parse_args(argv)
    errors = "skip" if args.skip_bad_lines else "strict"
    stats = ReadStats()
    common = dict(field=args.field, errors=errors, max_texts=args.max_texts)
    sources = [Path(c) for c in args.corpus]
    output = Path(args.output)

    if args.command == "char":
        tokens = build_char_vocab(
            sources, vocab_size=args.vocab_size, min_frequency=args.min_frequency, num_unused=args.num_unused,
            lowercase=not args.cased, stats=stats, **common,
        )
        _write_char_output(tokens, output, lowercase=not args.cased)
    elif args.command == "word":
        segmenter = Segmenter(args.segmenter, hmm=False, user_dict=args.user_dict)
        tokens = build_word_vocab(
            sources, char_vocab=args.char_vocab, num_words=args.num_words, min_frequency=args.min_frequency,
            segmenter=segmenter, **common,
        )
        if output.suffix == ".txt":
            write_vocab(tokens, output)
        else:
            ChineseWordTokenizer(tokens, segmenter=args.segmenter, user_dict=args.user_dict).save_pretrained(output)
    elif args.command == "spm":
        build_sentencepiece(
            sources, output, vocab_size=args.vocab_size, model_type=args.model_type,
            segmenter=Segmenter(args.segmenter, hmm=args.hmm), **common,
        )
    else:
        from . import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
        keep_ids = keep_tokens_from_corpus(
            tokenizer, sources, min_count=args.min_count, keep_unused=args.keep_unused, **common
        )
        prune_tokenizer(tokenizer, keep_ids).save_pretrained(output)
        (output / "keep_ids.json").write_text(json.dumps(keep_ids), encoding="utf-8")
        print(f"kept {len(keep_ids)} of {len(tokenizer)} tokens", file=sys.stderr)
    if stats.skipped:
        print(f"skipped lines: {dict(stats.skipped)}", file=sys.stderr)
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _write_char_output(tokens, output: Path, lowercase: bool):
    if output.suffix == ".txt":
        write_vocab(tokens, output)
    else:
        ChineseCharTokenizer(tokens, do_lower_case=lowercase).save_pretrained(output)


if __name__ == "__main__":
    sys.exit(main())
