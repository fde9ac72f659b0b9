"""Reading corpora: text files, directories, JSONL (with a field name), saved `datasets` folders.

Bad input never crashes deep inside: a clear error names the file, line and field, or, when the
caller asks for it, the line is skipped and counted in the returned report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class CorpusError(ValueError):
    """A corpus problem, with the file and line it was found at."""


@dataclass
class ReadReport:
    files: int = 0
    documents: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"

    def summary(self) -> str:
        s = f"{self.documents} documents from {self.files} file(s)"
        return s + (f", {len(self.skipped)} bad line(s) skipped (first: {self.skipped[0]})" if self.skipped else "")


MAX_LINE_CHARS = 1_000_000  # a "line" longer than this is almost surely not text (a binary or a dump)


def corpus_files(paths) -> list[Path]:
    files = []
    for path in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl", ".json"))
            if not found:
                raise CorpusError(f"{path}: directory holds no .txt/.jsonl files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CorpusError(f"{path}: no such file or directory")
    return files


def iter_records(files, text_field: str | None = None, skip_bad_lines: bool = False, fields=None):
    """Yield {"text": ..., "bad": ""} per document line (or, with `fields`, those JSON fields), and
    {"bad": "file:line: reason", ...} for a bad line when `skip_bad_lines` (else raise CorpusError).
    A generator over plain arguments, so `datasets.Dataset.from_generator` can cache and shard it."""
    names = fields or ["text"]
    for path in map(Path, files):
        is_json = path.suffix in (".jsonl", ".json")
        if is_json and not (text_field or fields):
            raise CorpusError(f"{path}: JSON lines need --text_field naming the field that holds the text")
        if fields and not is_json:
            raise CorpusError(f"{path}: fields {fields} need JSON lines (.jsonl)")
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    values = [_decode_line(raw, is_json, name if fields else text_field) for name in names]
                except CorpusError as e:
                    where = f"{path}:{lineno}: {e}"
                    if not skip_bad_lines:
                        raise CorpusError(where + " (pass skip_bad_lines / --skip_bad_lines to skip such lines)") from None
                    yield {**{n: "" for n in names}, "bad": where}
                    continue
                if all(values):
                    yield {**dict(zip(names, values)), "bad": ""}


def read_documents(paths, text_field: str | None = None, skip_bad_lines: bool = False):
    """One document per non-empty line of text files, or per JSON line (its `text_field`).

    Returns (documents, ReadReport). Errors name file:line; `skip_bad_lines` counts them instead.
    """
    report, docs = ReadReport(), []
    files = corpus_files(paths)
    report.files = len(files)
    for record in iter_records(files, text_field, skip_bad_lines):
        if record["bad"]:
            report.skipped.append(record["bad"])
        else:
            docs.append(record["text"])
    report.documents = len(docs)
    if not docs:
        raise CorpusError(f"corpus {', '.join(map(str, paths if not isinstance(paths, (str, Path)) else [paths]))} is empty")
    return docs, report


def _decode_line(raw: bytes, is_json: bool, text_field: str | None) -> str:
    if len(raw) > MAX_LINE_CHARS:
        raise CorpusError(f"line of {len(raw)} bytes is longer than {MAX_LINE_CHARS}")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"invalid UTF-8 at byte {e.start}") from None
    line = line.strip()
    if not is_json or not line:
        return line
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"invalid JSON ({e.msg})") from None
    if not isinstance(record, dict) or text_field not in record:
        raise CorpusError(f"JSON object has no field {text_field!r}")
    value = record[text_field]
    if not isinstance(value, str):
        raise CorpusError(f"field {text_field!r} is {type(value).__name__}, not a string")
    return value.strip()
