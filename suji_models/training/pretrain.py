"""The pretraining driver behind `pretrain/run_mlm.py`, `run_clm.py` and `run_unilm.py`.

Options come from dataclass defaults, then a JSON `--config`, then `--key value` on the command
line. Data is prepared once (rank 0 first, the other ranks then hit the `datasets` cache).

The training tricks of `suji_models.optim` are switched by the same options as in the finetuning
recipes (`--optimizer adax | adafactor`, `--ema`, `--loss_trick fgm | gradient_penalty`,
`--child_tuning`, `--layer_decay`); with `--ema` the final model is the averaged one. R-Drop is
refused here: it pairs each row's softmax with its copy's, and the masked-LM head returns only the
masked positions of the whole batch, so rows and their copies do not line up.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.distributed as dist

from ..configuration import PRESETS, SujiConfig
from . import options
from .options import option
from .data import (
    RowSource,
    StreamRows,
    clm_batch,
    default_num_proc,
    encode_and_pack,
    encode_pairs,
    load_corpus,
    mlm_batch,
    unilm_batch,
)
from ..convert.loading import checkpoint_config
from ..optim.hooks import TrickOptions, step_hooks
from .errors import UserError, as_user_errors, check_resume
from .checkpoint import save_final
from .loop import TrainArgs, deepspeed_config, finish_distributed, init_distributed, train


@dataclass
class DataArgs:
    """Options of the pretraining data and model."""

    train_file: str = option("", "corpus: text (one document per line), JSONL, TSV, a folder or a saved dataset; "
                                 "comma-separated for several")
    text_field: str | None = option(None, "JSONL / TSV field holding the text")
    source_field: str = option("source", "UniLM pairs: the source field")
    target_field: str = option("target", "UniLM pairs: the target field")
    tokenizer: str = option("", "tokenizer folder, vocab.txt (char WordPiece) or sentencepiece .model")
    model_preset: str = option("roformer-tiny", "architecture preset (suji_models.configuration.PRESETS)",
                               choices=tuple(PRESETS))
    model_overrides: str = option("", "JSON object of config fields over the preset, e.g. "
                                      "'{\"hidden_size\": 256, \"num_hidden_layers\": 4}'")
    model: str | None = option(None, "continue from this checkpoint folder instead of a preset")
    max_seq_length: int = option(128, "tokens per packed row")
    mask_prob: float = option(0.15, "MLM: share of tokens predicted")
    whole_word_masking: bool = option(True, "MLM: mask whole jieba words")
    segmenter: Literal["rjieba", "jieba"] = option("rjieba", "word boundaries for whole-word masking")
    streaming: bool = option(False, "read the corpus as a stream (larger than memory)")
    num_proc: int = option(0, "tokenization processes (0: one per core)")
    skip_bad_lines: bool = option(False, "skip (and count) undecodable / malformed lines instead of stopping")
    packing_mask: bool = option(True, "attention stays inside each packed document (block-diagonal)")


def parse_args(argv=None, **overrides):
    """(DataArgs, TrickOptions, TrainArgs) from dataclass defaults <- `overrides` (a script's defaults) <- JSON
    --config <- command line."""
    return options.parse_args((DataArgs, TrickOptions, TrainArgs), argv, **overrides)


@contextlib.contextmanager
def rank_zero_first(rank: int):
    """Rank 0 prepares (and caches) the data; the other ranks wait, then read the cache."""
    if rank != 0:
        dist.barrier()
    yield
    if rank == 0:
        dist.barrier()


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token, 6N + 12*L*s*d (N: parameters touched per token, i.e. all but the
    position / token-type tables), as in the PaLM MFU definition."""
    n = config.num_hidden_groups * (4 * config.hidden_size ** 2 + 2 * config.hidden_size * config.intermediate_size)
    n = n * config.num_hidden_layers // config.num_hidden_groups + config.vocab_size * config.embedding_size
    return 6 * n + 12 * config.num_hidden_layers * seq_len * config.hidden_size


def run(objective: str, model_class, argv=None, **defaults):
    """Pretrain with `objective` (mlm | clm | unilm); returns [(step, loss)]."""
    losses = _run(objective, model_class, argv, **defaults)
    finish_distributed()
    return losses


def _run(objective: str, model_class, argv=None, **defaults):
    data, tricks, args = parse_args(argv, **defaults)
    if tricks.loss_trick == "rdrop":
        raise UserError("--loss_trick rdrop is for finetuning: R-Drop pairs each row's softmax with its copy's, and "
                        "the pretraining heads return the masked / shifted positions of the whole batch, which do "
                        "not pair up; use fgm or gradient_penalty")
    rank, world = init_distributed()
    deepspeed_config(args, world)  # a contradicting DeepSpeed JSON fails here, before any data work
    from tokenization import load_tokenizer

    if not data.train_file:
        raise SystemExit("--train_file is required")
    with as_user_errors(ValueError, OSError, prefix="--tokenizer "):
        tokenizer = load_tokenizer(data.tokenizer)
    if data.model:  # a folder that is no checkpoint fails here, before any data work
        with as_user_errors(ValueError, OSError, prefix="--model "):
            model_config = checkpoint_config(data.model)
    else:  # a bad preset or override fails here, before any data work
        with as_user_errors(ValueError):
            model_config = SujiConfig.from_preset_options(data.model_preset, data.model_overrides,
                                                          data.max_seq_length, vocab_size=len(tokenizer),
                                                          pad_token_id=tokenizer.pad_token_id)
    check_resume(args.output_dir, model_config, args.resume)  # before DeepSpeed's size mismatch deep in loading

    num_proc = data.num_proc or default_num_proc()
    started = time.time()
    fields = [data.source_field, data.target_field] if objective == "unilm" else None
    with rank_zero_first(rank):
        corpus, report = load_corpus(data.train_file, data.text_field, fields=fields, skip_bad_lines=data.skip_bad_lines,
                                     streaming=data.streaming, num_proc=None if data.streaming else num_proc)
        map_kwargs = {} if data.streaming else {"num_proc": num_proc, "desc": "tokenize + pack"}
        if objective == "unilm":
            encode = partial(encode_pairs, tokenizer=tokenizer, max_length=data.max_seq_length,
                             source=data.source_field, target=data.target_field)
        else:
            encode = partial(encode_and_pack, tokenizer=tokenizer, max_length=data.max_seq_length,
                             whole_word=objective == "mlm" and data.whole_word_masking, segmenter=data.segmenter)
        rows = corpus.map(encode, batched=True, batch_size=1000, remove_columns=fields or ["text"], **map_kwargs)
        if not data.packing_mask and not data.streaming and "document_ids" in rows.column_names:
            rows = rows.remove_columns("document_ids")
    if data.streaming:
        source = StreamRows(rows, args.per_device_batch_size)
        if rank == 0:
            print(f"data: streaming {report.files} file(s)", flush=True)
    else:
        source = RowSource(rows, args.per_device_batch_size, args.seed)
        if rank == 0:
            tokens = sum(map(len, rows["input_ids"]))
            extra = ""
            if "truncated" in rows.column_names:
                extra = f", {sum(rows['truncated'])} over-long pair(s) truncated"
            print(f"data: {report.summary()}; {len(rows)} rows, {tokens} tokens, padding "
                  f"{1 - tokens / (len(rows) * data.max_seq_length):.1%} at length {data.max_seq_length}{extra} "
                  f"({time.time() - started:.0f}s)", flush=True)

    collate = {"mlm": partial(mlm_batch, mask_prob=data.mask_prob, whole_word=data.whole_word_masking),
               "clm": clm_batch, "unilm": unilm_batch}[objective]

    first_batch = {}  # kept for the export check (a stream cannot be rewound to ask again)

    def batches(index: int, rank: int, world: int):
        ids = source.indices(index, rank, world) if isinstance(source, RowSource) else None
        picked = source.rows(index, rank, world)
        if not data.packing_mask:
            picked = [{k: v for k, v in r.items() if k != "document_ids"} for r in picked]
        # masks drawn by global micro-batch number, as the rows are (the same on any world size)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + index * world + rank)
        batch = collate(picked, tokenizer=tokenizer, generator=gen)
        batch.pop("truncated", None)
        if not first_batch:
            first_batch.update(batch)
        if ids is not None:
            batch["sample_ids"] = ids  # for --log_samples; the loop takes it out before the forward pass
        return batch

    def make_model():
        if data.model:
            return model_class.from_pretrained(data.model)
        return model_class._from_config(model_config)

    def save_files(path):
        tokenizer.save_pretrained(path)

    def batch_at(index):  # for ChildTuning-D's Fisher information
        return {k: v for k, v in batches(index, rank, world).items() if k != "sample_ids"}

    with as_user_errors(ValueError):  # a trick the ZeRO stage refuses: one line, the reason
        hooks = step_hooks(tricks, args, batch_at)
    losses, engine = train(make_model, batches, args, save_files=save_files,
                           flops_per_token=partial(flops_per_token, seq_len=data.max_seq_length), hooks=hooks)
    if args.stop_at_step and losses and losses[-1][0] == args.stop_at_step:
        return losses
    probe = {k: v for k, v in first_batch.items() if k not in ("labels", "masked_logits_only")}
    with hooks.evaluated_weights(engine) if hooks is not None else contextlib.nullcontext():  # EMA: the average
        final = save_final(engine, args.output_dir, tokenizer, probe=probe)
    if rank == 0:
        head, tail = losses[:10], losses[-10:]
        first = sum(l for _, l in head) / max(1, len(head))
        last = sum(l for _, l in tail) / max(1, len(tail))
        print(f"summary: {len(losses)} steps, loss {first:.3f} -> {last:.3f} (mean of first/last 10 steps)"
              + (f", {len(report.skipped)} bad line(s) skipped" if report.skipped else ""), flush=True)
        print(f"checkpoint: {final}")
        print(f"load it with: {model_class.__name__}.from_pretrained({str(final)!r})  # after `import suji_models`")
    return losses
