"""Readers every recipe shares: JSON objects (JSONL or concatenated), text lines, and seeded splits.

Errors name the file and line (and the field when one is missing), so a user fixes their data
instead of reading a traceback. Splits are deterministic functions of a seed, written into each
recipe's results so a table can be reproduced.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def iter_json_objects(path, with_lines: bool = False):
    """JSON objects one after another: JSONL, or pretty-printed objects concatenated (CLUENER).
    With `with_lines`, yields (line number where the object starts, object)."""
    text = Path(path).read_text(encoding="utf-8")
    decoder, i = json.JSONDecoder(), 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as why:
            raise DataError(f"{path}:{line}: not a JSON object ({why.msg})") from None
        yield (line, obj) if with_lines else obj


def json_field(obj, name: str, where: str, kind=None):
    """`obj[name]`, or a DataError naming `where` (file:line) and the field; `kind` checks the type."""
    if not isinstance(obj, dict) or name not in obj:
        raise DataError(f"{where}: missing field {name!r}")
    value = obj[name]
    if kind is not None and not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{where}: field {name!r} must be {names}, got {type(value).__name__}")
    return value


def read_texts(path, field: str = "text") -> list[str]:
    """Texts to predict on: JSON objects with a `field` (JSONL or concatenated), else one per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    head = path.read_text(encoding="utf-8").lstrip()[:1]
    if head == "{":
        return [json_field(obj, field, f"{path}:{line}", str) for line, obj in iter_json_objects(path, True)]
    return [line.rstrip("\r\n") for line in path.open(encoding="utf-8") if line.strip()]


def split_examples(examples, dev_fraction: float = 0.2, seed: int = 0):
    """A deterministic (train, dev) split by a seeded shuffle of the example indices; order kept."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_dev = int(round(len(examples) * dev_fraction))
    dev, train = sorted(order[:n_dev]), sorted(order[n_dev:])
    return [examples[i] for i in train], [examples[i] for i in dev]


def subsample(examples, limit: int, seed: int = 0):
    """At most `limit` examples, chosen by a seeded shuffle (order kept); 0 keeps all."""
    if not limit or limit >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def split_by_group(examples, group_of, dev_fraction: float = 0.2, seed: int = 0):
    """(train, dev) with every group (a passage, a document) wholly on one side: the groups are
    shuffled with the seed and the first `dev_fraction` of them go to dev. Use it where one text
    carries several examples, or a model is scored on text it trained on."""
    groups = sorted({group_of(ex) for ex in examples}, key=str)
    random.Random(seed).shuffle(groups)
    dev_groups = set(groups[:int(round(len(groups) * dev_fraction))])
    train = [ex for ex in examples if group_of(ex) not in dev_groups]
    dev = [ex for ex in examples if group_of(ex) in dev_groups]
    return train, dev
