"""The pretraining view of a corpus: `tokenization`'s reader (text / JSONL / TSV files or directories,
errors naming file, line and field), with texts stripped and bad lines either raised or, with
`skip_bad_lines`, marked per record so the count survives `datasets` worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenization._io import CorpusError, iter_records as _read_records, list_corpus_files

__all__ = ["CorpusError", "ReadReport", "iter_records", "read_documents"]

SKIP_HINT = " (pass skip_bad_lines / --skip_bad_lines to skip such lines)"


@dataclass
class ReadReport:
    files: int = 0
    documents: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"

    def summary(self) -> str:
        s = f"{self.documents} documents from {self.files} file(s)"
        return s + (f", {len(self.skipped)} bad line(s) skipped (first: {self.skipped[0]})" if self.skipped else "")


def iter_records(files, text_field: str | None = None, skip_bad_lines: bool = False, fields=None):
    """Yield {"text": ..., "bad": ""} per document line (or, with `fields`, those fields), and
    {"bad": "file:line: reason", ...} for a bad line when `skip_bad_lines` (else raise CorpusError).
    A generator over plain arguments, so `datasets.Dataset.from_generator` can cache and shard it."""
    names = list(fields) if fields else ["text"]
    for record in _read_records(files, list(fields) if fields else text_field, errors="yield"):
        if isinstance(record, CorpusError):
            if not skip_bad_lines:
                raise CorpusError(record.path, record.line, record.message + SKIP_HINT, record.field, record.reason)
            yield {**{n: "" for n in names}, "bad": str(record)}
            continue
        values = [value.strip() for value in record.values()]
        if all(values):
            yield {**dict(zip(names, values)), "bad": ""}


def read_documents(paths, text_field: str | None = None, skip_bad_lines: bool = False):
    """All documents in memory: (list of texts, ReadReport). Errors name file:line; `skip_bad_lines`
    counts them instead."""
    report, docs = ReadReport(), []
    files = list_corpus_files(paths)
    report.files = len(files)
    for record in iter_records(files, text_field, skip_bad_lines):
        if record["bad"]:
            report.skipped.append(record["bad"])
        else:
            docs.append(record["text"])
    report.documents = len(docs)
    if not docs:
        raise CorpusError(", ".join(map(str, files)), None, "corpus is empty")
    return docs, report
