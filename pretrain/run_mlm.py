"""Masked-LM pretraining (BERT / RoFormer / ALBERT) on DeepSpeed.

    deepspeed --num_gpus 8 pretrain/run_mlm.py --config configs/pretrain/roformer_tiny.json --train_file corpus/
    ./launch.sh pretrain                      # tiny RoFormer on the embedded corpus, 2 CPU processes

Any `--key value` overrides the JSON config (`--config`); see `parse_args` for the keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from suji_models import SujiConfig, SujiForMaskedLM
from suji_models.training.data import pack_rows, read_documents
from suji_models.training.loop import TrainArgs, init_distributed, save_final, train
from suji_models.training.masking import mask_for_mlm

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = dict(
    train_file=str(REPO / "pretrain/data/peoples_daily_1998_sample.txt"),
    text_field=None,
    tokenizer=str(REPO / "pretrain/data/vocab.txt"),
    model_preset="roformer-tiny",
    model=None,  # a checkpoint to continue from instead of a preset
    max_seq_length=128,
    mask_prob=0.15,
    skip_bad_lines=False,
)


def parse_args(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    defaults = {**DEFAULTS, **{f.name: f.default for f in dataclasses.fields(TrainArgs)}}
    if known.config:
        recipe = json.loads(Path(known.config).read_text(encoding="utf-8"))
        unknown = set(recipe) - set(defaults)
        if unknown:
            raise SystemExit(f"{known.config}: unknown keys {sorted(unknown)}")
        defaults.update(recipe)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON file of defaults for the options below")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    for key, value in defaults.items():
        kind = type(value) if value is not None and not isinstance(value, bool) else str
        if isinstance(value, bool):
            parser.add_argument(f"--{key}", type=lambda s: s.lower() in ("1", "true", "yes"), default=value)
        else:
            parser.add_argument(f"--{key}", type=kind, default=value)
    return parser.parse_args(argv)


def load_tokenizer(path):
    try:
        from tokenization import load_tokenizer as load
    except ImportError:  # TEMPORARY until the tokenization package lands
        from transformers import BertTokenizer

        return BertTokenizer(vocab=str(path))
    return load(path)


def main(argv=None):
    args = parse_args(argv)
    train_args = TrainArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainArgs)})
    rank, world = init_distributed()
    tokenizer = load_tokenizer(args.tokenizer)
    docs, report = read_documents(args.train_file, args.text_field, args.skip_bad_lines)
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    rows = pack_rows(ids, args.max_seq_length, tokenizer.cls_token_id, tokenizer.sep_token_id)
    n_tokens = sum(map(len, rows))
    if rank == 0:
        print(f"data: {report.summary()}; {len(rows)} rows of <= {args.max_seq_length} tokens, "
              f"padding {1 - n_tokens / (len(rows) * args.max_seq_length):.1%}", flush=True)

    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    batch_size = args.per_device_batch_size

    def batches(index: int, rank: int, world: int):
        # Global sample g of this micro-step -> (epoch, position) -> row of that epoch's permutation.
        picked = []
        for j in range(batch_size):
            g = (index * world + rank) * batch_size + j
            epoch, pos = divmod(g, len(rows))
            perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
            picked.append(rows[int(perm[pos])])
        length = max(map(len, picked))
        input_ids = torch.full((batch_size, length), tokenizer.pad_token_id)
        attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
        for i, row in enumerate(picked):
            input_ids[i, :len(row)] = torch.tensor(row)
            attention_mask[i, :len(row)] = 1
        maskable = attention_mask.bool() & ~torch.isin(input_ids, special)
        gen = torch.Generator().manual_seed((args.seed * 1_000_003 + index) * 1009 + rank)
        corrupted, labels = mask_for_mlm(input_ids, mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                                         maskable=maskable, mask_prob=args.mask_prob, generator=gen)
        return {"input_ids": corrupted, "attention_mask": attention_mask, "labels": labels}

    if args.model:
        model = SujiForMaskedLM.from_pretrained(args.model)
    else:
        config = SujiConfig.from_preset(args.model_preset, vocab_size=len(tokenizer),
                                        pad_token_id=tokenizer.pad_token_id)
        if config.max_position_embeddings < args.max_seq_length:
            config.max_position_embeddings = args.max_seq_length
        model = SujiForMaskedLM(config)
    losses, engine = train(model, batches, train_args, tokenizer=tokenizer)
    final = save_final(engine, train_args.output_dir, tokenizer)
    if rank == 0:
        first = sum(l for _, l in losses[:10]) / max(1, len(losses[:10]))
        last = sum(l for _, l in losses[-10:]) / max(1, len(losses[-10:]))
        print(f"summary: {len(losses)} steps, loss {first:.3f} -> {last:.3f} (mean of first/last 10 steps)")
        print(f"checkpoint: {final}")
        print(f"load it with: SujiForMaskedLM.from_pretrained({str(final)!r})  # after `import suji_models`")
    return losses


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
