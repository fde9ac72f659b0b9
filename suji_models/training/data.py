"""Pretraining data: corpus -> (tokens, word ids) -> packed rows -> batches.

- `load_corpus`: text files, directories, JSONL (a field, or several for pairs), saved `datasets`
  folders; map-style (cached Arrow, `num_proc`) or streaming for corpora larger than memory.
- `pack_segments`: documents become segments `[CLS] tokens [SEP]` laid into rows of
  `max_length`; a long document is cut into several segments (nothing dropped) and a segment may
  start in the room left at the end of a row, so padding stays near zero. Each token carries the
  index of its segment (`document_ids`): attention stays inside a segment and positions restart,
  so a packed document is computed exactly as if it were alone.
- `RowSource` / `StreamRows`: which rows rank r trains on at step t, a pure function of
  (seed, t, r) for map-style data (exact resume from the step counter alone).
- `mlm_batch` / `clm_batch` / `unilm_batch`: pad, build labels (and the 80/10/10 whole-word masks).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from tokenization._io import list_corpus_files

from .corpus import CorpusError, ReadReport, iter_records
from .masking import mask_for_mlm

logger = logging.getLogger(__name__)
MIN_PIECE = 8  # do not start a segment in less room than this: it would carry almost no context


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def load_corpus(paths, text_field=None, *, fields=None, skip_bad_lines=False, streaming=False, num_proc=None):
    """Returns (dataset with column "text" — or the `fields` — , ReadReport).

    Map-style datasets are written to the `datasets` cache (keyed by the files' paths, sizes and
    modification times), so a second run or the other ranks reuse them.
    """
    import datasets

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    columns = fields or ["text"]
    report = ReadReport()
    if len(paths) == 1 and _is_saved_dataset(Path(paths[0])):
        ds = datasets.load_from_disk(str(paths[0]))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        wanted = fields or [text_field or "text"]
        missing = [c for c in wanted if c not in ds.column_names]
        if missing:
            raise CorpusError(paths[0], None, f"saved dataset has no column(s) {missing}; columns: {ds.column_names}")
        if not fields and wanted[0] != "text":
            ds = ds.rename_column(wanted[0], "text")
        ds = ds.select_columns(columns)
        report.files, report.documents = 1, len(ds)
        if not len(ds):
            raise CorpusError(paths[0], None, "corpus is empty")
        return (ds.to_iterable_dataset() if streaming else ds), report

    files = list_corpus_files(paths)
    report.files = len(files)
    stamps = [f"{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]  # invalidates the cache on change
    # Lists in gen_kwargs are split across workers by datasets: only files (and their stamps) are.
    kwargs = dict(files=[str(f) for f in files], text_field=text_field, skip_bad_lines=skip_bad_lines,
                  fields=tuple(fields) if fields else None, stamps=stamps)
    if streaming:  # bad lines cannot be counted up front: each is reported when the stream meets it
        stream = datasets.IterableDataset.from_generator(_records, gen_kwargs=kwargs)
        return stream.filter(_keep_reporting_bad, input_columns="bad").remove_columns("bad"), report
    try:
        ds = datasets.Dataset.from_generator(_records, gen_kwargs=kwargs,
                                             num_proc=min(num_proc or 1, len(files)) if num_proc else None)
    except datasets.exceptions.DatasetGenerationError as e:  # surface our file:line message
        cause = e.__cause__ or e.__context__
        if type(cause).__name__ == "SchemaInferenceError":  # not one record in any file
            raise CorpusError(", ".join(map(str, paths)), None, "corpus is empty") from None
        raise (cause if isinstance(cause, CorpusError) else e) from None
    bad = ds.filter(lambda b: bool(b), input_columns="bad")
    report.skipped = bad["bad"]
    ds = ds.filter(lambda b: not b, input_columns="bad").remove_columns("bad")
    report.documents = len(ds)
    if not len(ds):
        raise CorpusError(", ".join(map(str, paths)), None, "corpus is empty")
    return ds, report


def _keep_reporting_bad(bad: str) -> bool:
    if bad:
        logger.warning("skipped bad line %s", bad)
    return not bad


def _records(files, text_field, skip_bad_lines, fields, stamps):
    del stamps  # only part of the cache key
    yield from iter_records(files, text_field, skip_bad_lines, fields)


def pack_segments(token_lists, word_lists, max_length: int, cls_id: int, sep_id: int):
    """Pack documents into rows (see the module docstring). Returns a dict of lists with
    input_ids, document_ids and, when `word_lists` is given, word_ids (unique within a row, -1 on
    [CLS]/[SEP])."""
    if max_length < 3:
        raise ValueError("max_length must leave room for [CLS], one token and [SEP]")
    out = {"input_ids": [], "document_ids": []}
    if word_lists is not None:
        out["word_ids"] = []
    ids, docs, words = [], [], []

    def close():
        nonlocal ids, docs, words
        if ids:
            out["input_ids"].append(ids)
            out["document_ids"].append(docs)
            if word_lists is not None:
                out["word_ids"].append(words)
        ids, docs, words = [], [], []

    for n, tokens in enumerate(token_lists):
        pos = 0
        while pos < len(tokens):
            room = max_length - len(ids) - 2
            if room < min(MIN_PIECE, len(tokens) - pos):
                close()
                room = max_length - 2
            piece = tokens[pos:pos + room]
            segment = docs[-1] + 1 if docs else 0
            ids += [cls_id, *piece, sep_id]
            docs += [segment] * (len(piece) + 2)
            if word_lists is not None:
                wpiece = word_lists[n][pos:pos + room]
                base = (max(words) + 1 if words else 0) - min(wpiece)
                words += [-1, *(w + base for w in wpiece), -1]
            pos += len(piece)
            if len(ids) > max_length - 3:
                close()
    close()
    return out


def encode_and_pack(batch, *, tokenizer, max_length, whole_word=False, segmenter=None):
    """`datasets.map(batched=True)` function: tokenize a batch of texts (with word boundaries for
    whole-word masking) and pack it into rows."""
    texts = batch["text"]
    if whole_word:
        from tokenization.words import word_boundaries

        encoded = word_boundaries(texts, tokenizer, segmenter=segmenter)
        token_lists, word_lists = encoded["input_ids"], encoded["word_ids"]
    else:
        token_lists, word_lists = tokenizer(texts, add_special_tokens=False)["input_ids"], None
    return pack_segments(token_lists, word_lists, max_length, tokenizer.cls_token_id, tokenizer.sep_token_id)


def encode_pairs(batch, *, tokenizer, max_length, source="source", target="target"):
    """`datasets.map` function for UniLM: `[CLS] source [SEP] target [SEP]` with token types 0/1.
    Over-long pairs lose source tokens first (the target is what is learned), then target tokens;
    rows are not packed (one pair per row) and the cut count is returned in `truncated`."""
    src = tokenizer(batch[source], add_special_tokens=False)["input_ids"]
    tgt = tokenizer(batch[target], add_special_tokens=False)["input_ids"]
    out = {"input_ids": [], "token_type_ids": [], "truncated": []}
    budget = max_length - 3
    for s, t in zip(src, tgt):
        t_keep = min(len(t), max(budget // 2, budget - len(s)))
        s_keep = min(len(s), budget - t_keep)
        s2, t2 = s[:s_keep], t[:t_keep]
        out["input_ids"].append([tokenizer.cls_token_id, *s2, tokenizer.sep_token_id, *t2, tokenizer.sep_token_id])
        out["token_type_ids"].append([0] * (len(s2) + 2) + [1] * (len(t2) + 1))
        out["truncated"].append(int(len(s2) < len(s) or len(t2) < len(t)))
    return out


class RowSource:
    """Rows of a map-style dataset for (micro-step, rank): global sample g = (t*world + r)*B + j,
    epoch = g // N, row = permutation_epoch[g % N]. Every rank reads a disjoint slice.

    With `lengths` (one per row) the epoch's permutation is length-grouped, as transformers'
    `group_by_length`: the shuffled rows are cut into groups of `group_batches` batches, each group is
    sorted by length and its batches are shuffled again. A batch then holds rows of similar length, so
    little of it is padding (a head scoring L x L spans pays for padding squared); the order is still
    a function of (seed, epoch) only, so exact resume and world-size changes keep working."""

    def __init__(self, dataset, batch_size: int, seed: int, lengths=None, group_batches: int = 50):
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} rows")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.lengths, self.group_batches = lengths, group_batches
        self._perm_epoch, self._perm = None, None

    def _permutation(self, epoch: int):
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            perm = torch.randperm(len(self.dataset), generator=gen)
            if self.lengths is not None:
                perm = self._grouped(perm, gen)
            self._perm, self._perm_epoch = perm, epoch
        return self._perm

    def _grouped(self, perm: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        size, out = self.batch_size * self.group_batches, []
        for start in range(0, len(perm), size):
            group = sorted(perm[start:start + size].tolist(), key=lambda i: -self.lengths[i])
            batches = [group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size)]
            for b in torch.randperm(len(batches), generator=gen).tolist():
                out.extend(batches[b])
        return torch.tensor(out)

    def indices(self, index: int, rank: int, world: int) -> list[int]:
        """Dataset indices of the rows of micro-step `index` on `rank` (they depend on `index * world + rank`
        only: the same global micro-batch gives the same rows whatever the world size)."""
        picked = []
        for j in range(self.batch_size):
            epoch, pos = divmod((index * world + rank) * self.batch_size + j, len(self.dataset))
            picked.append(int(self._permutation(epoch)[pos]))
        return picked

    def rows(self, index: int, rank: int, world: int) -> list[dict]:
        return [self.dataset[i] for i in self.indices(index, rank, world)]


class StreamRows:
    """Rows of a streaming dataset: this rank's shard (`split_dataset_by_node`), read in order and
    restarted each epoch. On resume the first request skips the rows already consumed."""

    def __init__(self, dataset, batch_size: int):
        self.dataset, self.batch_size = dataset, batch_size
        self._iter, self._next = None, None

    def rows(self, index: int, rank: int, world: int) -> list[dict]:
        from datasets.distributed import split_dataset_by_node

        if self._iter is None:
            self._shard = split_dataset_by_node(self.dataset, rank=rank, world_size=world)
            self._iter, self._next = iter(self._shard.skip(index * self.batch_size)), index
        if index != self._next:
            raise RuntimeError(f"streaming data is read in order: asked for step {index}, next is {self._next}")
        self._next += 1
        out = []
        while len(out) < self.batch_size:
            try:
                out.append(next(self._iter))
            except StopIteration:  # a new epoch over this rank's shard
                self._iter = iter(self._shard)
                if not out and self._empty():
                    raise CorpusError("streaming corpus", None, "no rows for this rank") from None
        return out

    def _empty(self):
        return next(iter(self._shard), None) is None


def pad_to_longest(rows, key, value, length: int | None = None):
    """[len(rows), longest] tensor of `row[key]` lists, padded with `value` on the right (to `length`
    when given). The one padding function of pretraining and the finetuning tasks."""
    length = max(len(r[key]) for r in rows) if length is None else length
    return torch.tensor([list(r[key]) + [value] * (length - len(r[key])) for r in rows])


def pad_rows(rows, pad_values: dict) -> dict:
    """A batch from row dicts: each key of `pad_values` that the rows have, padded to the longest row
    with its value, and `attention_mask` (1 on the real tokens of `input_ids`)."""
    batch = {key: pad_to_longest(rows, key, value) for key, value in pad_values.items() if key in rows[0]}
    lengths = torch.tensor([len(r["input_ids"]) for r in rows])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]).long()
    return batch


def _common(rows, pad_id):
    return pad_rows(rows, {"input_ids": pad_id, "document_ids": -1})


def mlm_batch(rows, *, tokenizer, generator, mask_prob=0.15, whole_word=True):
    batch = _common(rows, tokenizer.pad_token_id)
    # Structural tokens are never masked; [UNK] is an ordinary token (often inside a word).
    special = torch.tensor(sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}))
    maskable = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], special)
    word_ids = pad_to_longest(rows, "word_ids", -1) if whole_word and "word_ids" in rows[0] else None
    batch["input_ids"], batch["labels"] = mask_for_mlm(
        batch["input_ids"], mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer), maskable=maskable,
        word_ids=word_ids, mask_prob=mask_prob, generator=generator)
    batch["masked_logits_only"] = True  # the LM head runs on the ~15% masked positions only
    return batch


def clm_batch(rows, *, tokenizer, generator=None):
    """Next-token labels; padding and the first token of each packed segment (which must not be
    predicted from the previous document) are not scored."""
    batch = _common(rows, tokenizer.pad_token_id)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    if "document_ids" in batch:
        starts = torch.zeros_like(labels, dtype=torch.bool)
        starts[:, 1:] = batch["document_ids"][:, 1:] != batch["document_ids"][:, :-1]
        labels = labels.masked_fill(starts, -100)
    batch["labels"] = labels
    return batch


def unilm_batch(rows, *, tokenizer, generator=None):
    batch = _common(rows, tokenizer.pad_token_id)
    batch["token_type_ids"] = pad_to_longest(rows, "token_type_ids", 0)
    keep = batch["token_type_ids"].bool() & batch["attention_mask"].bool()
    batch["labels"] = batch["input_ids"].masked_fill(~keep, -100)
    return batch


def default_num_proc() -> int:
    return max(1, min(8, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))
