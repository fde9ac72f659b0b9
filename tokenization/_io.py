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
    """A corpus problem. ``path``, ``line`` and ``field`` locate it; ``reason`` is its short name in
    :attr:`ReadStats.skipped` (``invalid_utf8``, ``invalid_json``, ``missing_field``, ...)."""

    def __init__(self, path, line: int | None = None, message: str = "", field: str | None = None,
                 reason: str = "error"):
        self.path, self.line, self.field, self.reason, self.message = str(path), line, field, reason, message
        where = f"{path}:{line}" if line is not None else str(path)
        if field is not None:
            where += f" (field {field!r})"
        super().__init__(f"{where}: {message}" if message else where)


@dataclass
class ReadStats:
    """What a read saw. ``skipped`` counts skipped lines by reason (only filled with errors='skip')."""

    files: int = 0
    lines: int = 0
    texts: int = 0
    bytes: int = 0
    empty: int = 0
    skipped: collections.Counter = dc_field(default_factory=collections.Counter)


MAX_LINE_BYTES = 1_000_000  # a "line" longer than this is almost surely not text (a binary or a dump)


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
            raise CorpusError(path, None, "no such file or directory")
    return files


def iter_records(
    sources,
    fields=None,
    *,
    errors: str = "strict",
    stats: ReadStats | None = None,
) -> Iterator[dict[str, str] | CorpusError]:
    """Yield one ``{field: text}`` per non-blank line of a corpus (documents per line, as in CLUECorpus / UER).

    - ``*.txt``: the line is the text, under ``fields[0]`` (default ``"text"``); one field only.
    - ``*.jsonl`` / ``*.json``: one JSON object per line; ``fields`` names the keys to read.
    - ``*.tsv``: the first line is a header; ``fields`` names the columns to read.

    A bad line (invalid UTF-8, longer than MAX_LINE_BYTES, invalid JSON, a missing field, a value that
    is not a string) is a :class:`CorpusError` naming file, line and field. ``errors="strict"`` raises
    it; ``"skip"`` skips the line and counts it in ``stats.skipped`` by reason; ``"yield"`` yields the
    error in the line's place, for callers that count skips themselves (a ``datasets`` generator
    runs in worker processes, so it cannot share ``stats``). Lines whose fields are all blank are
    skipped and counted in ``stats.empty``. A JSON null reads as an empty text.
    """
    if errors not in ("strict", "skip", "yield"):
        raise ValueError(f"errors must be 'strict', 'skip' or 'yield', not {errors!r}")
    stats = stats if stats is not None else ReadStats()
    names = [fields] if isinstance(fields, str) else list(fields or [])
    for path in list_corpus_files(sources):
        stats.files += 1
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES or suffix in TSV_SUFFIXES:
            if not names:
                raise CorpusError(path, None, "JSONL/TSV input needs the name of its text field "
                                              "(field= / --text_field)")
            reader = _jsonl_values if suffix in JSONL_SUFFIXES else _tsv_values()
        else:
            if len(names) > 1:
                raise CorpusError(path, None, f"fields {names} need JSONL or TSV input; a text line is one text")
            reader = _txt_values
        keys = names or ["text"]
        for lineno, raw in _numbered_lines(path, stats):
            try:
                values = reader(path, lineno, raw, keys)
            except CorpusError as error:
                if errors == "strict" or error.reason == "missing_column":  # a bad header spoils the whole file
                    raise
                if errors == "yield":
                    yield error
                else:
                    stats.skipped[error.reason] += 1
                continue
            if values is None:  # a TSV header
                continue
            if not any(v.strip() for v in values):
                stats.empty += 1
                continue
            stats.texts += 1
            yield dict(zip(keys, values))


def iter_texts(
    sources,
    *,
    field: str | None = None,
    errors: str = "strict",
    stats: ReadStats | None = None,
    max_texts: int | None = None,
) -> Iterator[str]:
    """The texts of a corpus, one per non-blank line: :func:`iter_records` with one ``field``."""
    if errors not in ("strict", "skip"):
        raise ValueError(f"errors must be 'strict' or 'skip', not {errors!r}")
    for produced, record in enumerate(iter_records(sources, field, errors=errors, stats=stats), 1):
        yield next(iter(record.values()))
        if max_texts is not None and produced >= max_texts:
            return


def _numbered_lines(path: Path, stats: ReadStats) -> Iterator[tuple[int, bytes]]:
    """Raw lines split on b"\n" only: text mode would also split on U+2028, U+0085 and friends that
    real web text contains inside a document. A UTF-8 BOM at the start of the file is dropped."""
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            stats.lines += 1
            stats.bytes += len(raw)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield lineno, raw


def _decode(path, lineno: int, raw: bytes) -> str:
    if len(raw) > MAX_LINE_BYTES:
        raise CorpusError(path, lineno, f"line of {len(raw)} bytes is longer than {MAX_LINE_BYTES}",
                          reason="line_too_long")
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise CorpusError(path, lineno, f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset {exc.start} "
                                        "of the line)", reason="invalid_utf8") from None


def _txt_values(path, lineno, raw, keys):
    return [_decode(path, lineno, raw)]


def _jsonl_values(path, lineno, raw, keys):
    line = _decode(path, lineno, raw)
    if not line.strip():
        return [""] * len(keys)
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(path, lineno, f"invalid JSON ({exc.msg} at column {exc.colno})",
                          reason="invalid_json") from None
    return [_field_value(path, lineno, record, key) for key in keys]


def _tsv_values():
    """A reader with the file's column indices, found in its header line."""
    columns = None

    def read(path, lineno, raw, keys):
        nonlocal columns
        cells = _decode(path, lineno, raw).split("\t")
        if columns is None:
            missing = [k for k in keys if k not in cells]
            if missing:
                raise CorpusError(path, lineno, f"header has no column {missing[0]!r} (columns: {cells})", missing[0],
                                  reason="missing_column")
            columns = [cells.index(k) for k in keys]
            return None
        for key, column in zip(keys, columns):
            if column >= len(cells):
                raise CorpusError(path, lineno, f"row has {len(cells)} columns, no column {column + 1}", key,
                                  reason="missing_field")
        return [cells[c] for c in columns]

    return read


def _field_value(path, lineno, record, field):
    if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise CorpusError(path, lineno, f"field missing (record has {keys})", field, reason="missing_field")
    value = record[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(path, lineno, f"value is {type(value).__name__}, not a string", field,
                          reason="not_a_string")
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
