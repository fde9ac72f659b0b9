"""Reading corpora: plain text, JSONL and TSV files or whole directories, line by line.

Every problem is reported with the file, the 1-based line number and (for JSONL/TSV) the field, so a
bad record in a 20 GB crawl can be found with `sed -n LINEp FILE`. With ``errors="skip"`` the bad
lines are skipped and counted in a :class:`ReadStats` instead.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Iterable, Iterator

# Suffixes picked up when a directory is given; anything else (LICENSE, README.md, ...) is ignored.
TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".json")
TSV_SUFFIXES = (".tsv",)
CORPUS_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + TSV_SUFFIXES

logger = logging.getLogger("tokenization")


class CorpusError(ValueError):
    """A corpus line that cannot be read. ``path``, ``line`` and ``field`` locate it."""

    def __init__(self, path, line: int | None, message: str, field: str | None = None):
        self.path, self.line, self.field = str(path), line, field
        where = f"{path}:{line}" if line is not None else str(path)
        if field is not None:
            where += f" (field {field!r})"
        super().__init__(f"{where}: {message}")


@dataclass
class ReadStats:
    """What a read saw. ``skipped`` counts skipped lines by reason (only filled with errors='skip')."""

    files: int = 0
    lines: int = 0
    texts: int = 0
    bytes: int = 0
    empty: int = 0
    skipped: collections.Counter = dc_field(default_factory=collections.Counter)


def list_corpus_files(sources) -> list[Path]:
    """Expand ``sources`` (a path, or a list of paths; directories recursively) into corpus files.

    Files named explicitly are always used; inside directories only ``*.txt``, ``*.jsonl``,
    ``*.json`` and ``*.tsv`` are picked up, in sorted order so every run reads the same sequence.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
            if not found:
                raise CorpusError(path, None, f"directory holds no corpus files ({', '.join(CORPUS_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"corpus source not found: {path}")
    return files


def iter_texts(
    sources,
    *,
    field: str | None = None,
    errors: str = "strict",
    stats: ReadStats | None = None,
    max_texts: int | None = None,
) -> Iterator[str]:
    """Yield the texts of a corpus, one per line (documents per line, as in CLUECorpus / UER).

    - ``*.txt``: each non-blank line is a text.
    - ``*.jsonl`` / ``*.json``: one JSON object per line; ``field`` names the text key.
    - ``*.tsv``: the first line is a header; ``field`` names the text column.

    ``errors="strict"`` raises :class:`CorpusError` naming file, line and field for invalid UTF-8,
    invalid JSON, a missing field or a non-string value; ``errors="skip"`` skips such lines and
    counts them in ``stats.skipped`` by reason. Blank lines are skipped silently (``stats.empty``).
    """
    if errors not in ("strict", "skip"):
        raise ValueError(f"errors must be 'strict' or 'skip', not {errors!r}")
    stats = stats if stats is not None else ReadStats()
    produced = 0
    for path in list_corpus_files(sources):
        stats.files += 1
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES or suffix in TSV_SUFFIXES:
            if field is None:
                raise CorpusError(path, None, "JSONL/TSV input needs field=<name of the text field>")
        reader = _iter_jsonl if suffix in JSONL_SUFFIXES else _iter_tsv if suffix in TSV_SUFFIXES else _iter_txt
        for text in reader(path, field, errors, stats):
            if not text.strip():
                stats.empty += 1
                continue
            stats.texts += 1
            yield text
            produced += 1
            if max_texts is not None and produced >= max_texts:
                return


def _iter_lines(path: Path, errors: str, stats: ReadStats) -> Iterator[tuple[int, str]]:
    """Decode a file line by line in binary mode.

    Binary splitting on b"\\n" only: text mode would also split on U+2028, U+0085 and friends that
    real web text contains inside a document. A UTF-8 BOM at the start of the file is dropped.
    """
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            stats.lines += 1
            stats.bytes += len(raw)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if errors == "skip":
                    stats.skipped["invalid_utf8"] += 1
                    continue
                raise CorpusError(
                    path, lineno, f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset {exc.start} of the line)"
                ) from None
            yield lineno, line.rstrip("\r\n")


def _iter_txt(path, field, errors, stats):
    for _, line in _iter_lines(path, errors, stats):
        yield line


def _iter_jsonl(path, field, errors, stats):
    for lineno, line in _iter_lines(path, errors, stats):
        if not line.strip():
            yield ""
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if errors == "skip":
                stats.skipped["invalid_json"] += 1
                continue
            raise CorpusError(path, lineno, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        value = _field_value(path, lineno, record, field, errors, stats)
        if value is not None:
            yield value


def _iter_tsv(path, field, errors, stats):
    column = None
    for lineno, line in _iter_lines(path, errors, stats):
        cells = line.split("\t")
        if column is None:
            if field not in cells:
                raise CorpusError(path, lineno, f"header has no column {field!r} (columns: {cells})", field)
            column = cells.index(field)
            continue
        if column >= len(cells):
            if errors == "skip":
                stats.skipped["missing_field"] += 1
                continue
            raise CorpusError(path, lineno, f"row has {len(cells)} columns, no column {column + 1}", field)
        yield cells[column]


def _field_value(path, lineno, record, field, errors, stats):
    if not isinstance(record, dict) or field not in record:
        if errors == "skip":
            stats.skipped["missing_field"] += 1
            return None
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise CorpusError(path, lineno, f"field missing (record has {keys})", field)
    value = record[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        if errors == "skip":
            stats.skipped["not_a_string"] += 1
            return None
        raise CorpusError(path, lineno, f"value is {type(value).__name__}, not a string", field)
    return value


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Group an iterable into lists of ``size`` (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_vocab(path) -> list[str]:
    """Tokens of a BERT ``vocab.txt`` in id order (line n holds id n-1).

    Read exactly like transformers' ``load_vocab`` (split on "\\n" only, strip the "\\n") so ids
    agree with ``BertTokenizer``; an empty line is an error naming the line, since it is almost
    always a stray newline that shifts every following id.
    """
    path = Path(path)
    tokens = []
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CorpusError(path, line, "vocabulary is not valid UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    for lineno, token in enumerate(lines, 1):
        token = token.rstrip("\r") if token.endswith("\r") and len(token) > 1 else token
        if token == "":
            raise CorpusError(path, lineno, "empty token in vocabulary")
        tokens.append(token)
    return tokens


def vocab_to_dict(tokens: list[str]) -> dict[str, int]:
    """token -> id; a duplicated token keeps its last id, as transformers' ``load_vocab`` does
    (and is logged, since the earlier id then never occurs)."""
    vocab = {}
    for index, token in enumerate(tokens):
        if token in vocab:
            first = vocab[token]
            logger.warning("vocabulary: %r at lines %d and %d; id %d is unused", token, first + 1, index + 1, first)
        vocab[token] = index
    return vocab


def write_vocab(tokens, path) -> Path:
    """Write tokens one per line (the ``vocab.txt`` format); refuses tokens that would break lines."""
    path = Path(path)
    for index, token in enumerate(tokens):
        if not token or "\n" in token or "\r" in token:
            raise ValueError(f"token {index} ({token!r}) cannot be written to a vocab.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(token + "\n" for token in tokens), encoding="utf-8")
    return path
