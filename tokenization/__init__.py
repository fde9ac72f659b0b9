"""Chinese tokenization for Suji: the lowest layer (imports nothing from ``suji_models``).

Tokenizers (all transformers tokenizers: batching, padding, truncation, pairs, tensors,
``save_pretrained`` / ``AutoTokenizer.from_pretrained``):

- :class:`ChineseCharTokenizer`: BERT-Chinese char WordPiece (Rust); saves as a plain ``BertTokenizer``.
- :class:`ChineseWordTokenizer`: jieba words + char fallback (WoBERT / RoFormer vocabularies).
- :class:`ChineseCpmTokenizer`: CPM-LM, jieba + ▂/▃ + sentencepiece.

:func:`load_tokenizer` opens any of them from a folder or a bare ``vocab.txt`` / ``.model`` file.
Vocabulary tools are in :mod:`tokenization.vocab`, word segmentation and whole-word-masking
boundaries in :mod:`tokenization.words`, corpus reading in :func:`iter_texts`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._base import SequenceTooLongError
from ._io import CorpusError, ReadStats, iter_texts, read_vocab, write_vocab
from .char import ChineseCharTokenizer
from .cpm import ChineseCpmTokenizer
from .word import ChineseWordTokenizer
from .words import Segmenter, boundary_agreement, collator_offsets, truncate_boundaries, word_boundaries

# Classes a saved tokenizer_config.json may name, and what load_tokenizer builds for them.
_BY_CLASS_NAME = {
    "BertTokenizer": ChineseCharTokenizer,
    "BertTokenizerFast": ChineseCharTokenizer,
    "ChineseCharTokenizer": ChineseCharTokenizer,
    "ChineseWordTokenizer": ChineseWordTokenizer,
    "RoFormerTokenizer": ChineseWordTokenizer,  # WoBERT/RoFormer folders: same algorithm (rjieba, no HMM)
    "RoFormerTokenizerFast": ChineseWordTokenizer,
    "ChineseCpmTokenizer": ChineseCpmTokenizer,
    "CpmTokenizer": ChineseCpmTokenizer,
    "CpmTokenizerFast": ChineseCpmTokenizer,
}


def _register_with_auto_tokenizer():
    """Let ``AutoTokenizer.from_pretrained`` find our classes by the name in tokenizer_config.json.

    ``AutoTokenizer.register`` needs a model config class, which a tokenizer folder does not
    have; the name registry it fills is what class-name lookup reads, so fill that directly.
    """
    try:
        from transformers.models.auto.tokenization_auto import REGISTERED_TOKENIZER_CLASSES
    except ImportError:  # a transformers without the registry: AutoTokenizer support is lost only
        return
    for cls in (ChineseCharTokenizer, ChineseWordTokenizer, ChineseCpmTokenizer):
        REGISTERED_TOKENIZER_CLASSES.setdefault(cls.__name__, cls)


_register_with_auto_tokenizer()

# The vocabulary tools load on first use, so that ``python -m tokenization.vocab`` (their command
# line) does not find its own module already imported by this package.
_VOCAB_TOOLS = (
    "build_char_vocab",
    "build_word_vocab",
    "build_sentencepiece",
    "keep_tokens_from_corpus",
    "reachable_tokens",
    "prune_tokenizer",
    "prune_embedding_rows",
    "prune_state_dict",
)


def __getattr__(name):
    if name in _VOCAB_TOOLS:
        from . import vocab

        return getattr(vocab, name)
    raise AttributeError(f"module 'tokenization' has no attribute {name!r}")


def load_tokenizer(path, **kwargs):
    """The right Suji tokenizer for ``path``.

    ``path`` is a saved tokenizer folder (char: ``tokenizer_class`` BertTokenizer; word:
    ChineseWordTokenizer or RoFormerTokenizer; CPM: ChineseCpmTokenizer or CpmTokenizer), a folder
    with only a ``vocab.txt`` (char) or ``spiece.model`` (CPM), or a bare ``vocab.txt`` / ``*.model``
    file. ``kwargs`` go to the tokenizer (e.g. ``model_max_length``, ``segmenter``).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix == ".model":
            return ChineseCpmTokenizer(path, **kwargs)
        if path.suffix == ".txt":
            return ChineseCharTokenizer(vocab=path, **kwargs)
        raise ValueError(f"{path}: expected a vocab.txt (char WordPiece) or a sentencepiece .model (CPM)")
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer at {path}")
    config_file = path / "tokenizer_config.json"
    class_name = None
    if config_file.is_file():
        class_name = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
    if class_name is None:
        if (path / "vocab.txt").is_file():
            class_name = "BertTokenizer"
        elif (path / "spiece.model").is_file():
            class_name = "CpmTokenizer"
    cls = _BY_CLASS_NAME.get(class_name)
    if cls is None:
        raise ValueError(
            f"{path}: tokenizer_class {class_name!r} is not one Suji can open "
            f"(known: {', '.join(sorted(_BY_CLASS_NAME))})"
        )
    return cls.from_pretrained(path, **kwargs)


__all__ = [
    "ChineseCharTokenizer",
    "ChineseWordTokenizer",
    "ChineseCpmTokenizer",
    "load_tokenizer",
    "SequenceTooLongError",
    "CorpusError",
    "ReadStats",
    "iter_texts",
    "read_vocab",
    "write_vocab",
    "build_char_vocab",
    "build_word_vocab",
    "build_sentencepiece",
    "keep_tokens_from_corpus",
    "reachable_tokens",
    "prune_tokenizer",
    "prune_embedding_rows",
    "prune_state_dict",
    "Segmenter",
    "word_boundaries",
    "truncate_boundaries",
    "collator_offsets",
    "boundary_agreement",
]
