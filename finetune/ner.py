"""Named entity recognition: GlobalPointer, Efficient GlobalPointer or a CRF on any Suji /
transformers encoder, trained with Suji's DeepSpeed loop (eval each epoch, best checkpoint kept).

    ./launch.sh finetune ner --config configs/finetune/ner_people_daily.json --model runs/mlm/final
    deepspeed --num_gpus 8 finetune/ner.py --train_file train.bio --dev_file dev.bio --format bio \
        --model path/to/chinese-bert --head efficient_global_pointer --output_dir runs/ner
    python finetune/ner.py --do_train false --model runs/ner/best --predict texts.txt   # tag new text

Data: --train_file / --dev_file in --format bio (People's Daily, Weibo), bmes (MSRA, Resume) or
cluener (CLUENER JSON). Without --dev_file the train file is split by a seeded shuffle
(--dev_fraction, --split_seed). --dataset people_daily | cluener is a shortcut for the development
data of this workplace, read from ../shared/data/ner beside the repository (People's Daily has
only example.dev there, split 80/20 with seed 0). Entities are character spans (end exclusive);
spans that do not align with tokens or are cut off by --max_seq_length are counted and printed,
and the dev metric is always computed against the original character spans (so they count as
misses). The metric is entity-level micro P/R/F1 on exact (start, end, type), equal to seqeval's
on BIO data.

Model: --model FOLDER (a Suji checkpoint such as pretrain/run_mlm.py's `final`, or a transformers
bert / roformer / albert / gpt2 folder; the tokenizer is read from the same folder unless
--tokenizer is given), or --model_preset NAME [--model_overrides JSON] --tokenizer VOCAB for a
randomly initialized encoder. --head global_pointer | efficient_global_pointer | crf.
Output: OUTPUT_DIR/best (the best checkpoint on dev F1: SujiForNer.from_pretrained loads it, with
its tokenizer), OUTPUT_DIR/results.json, and with --predict FILE (one text per line, or JSON
objects with a "text" field) a JSONL of {text, entities: [{start, end, type, text}]}.
Options: the NerArgs below and suji_models.training.loop.TrainArgs (--key value overrides --config).

Results (entity-level F1 on dev, %, measured here; the last row is the published reference):

| encoder (one RoFormer, 1.82M parameters)   | PD GP | PD EGP | PD CRF | CLUENER GP | CLUENER EGP | CLUENER CRF |
|--------------------------------------------|-------|--------|--------|------------|-------------|-------------|
| (a) random initialization                  | 48.51 | 50.23  | 52.62  | 48.79      | 19.43       | 54.87       |
| (b) after 300 MLM steps (run_mlm.py)       | 53.66 | 50.13  | 56.31  | 53.29      | 19.59       | 59.52       |
| published, BERT-base (PD test, CLUENER dev) | 95.51 | 95.36  | 95.46  | 80.03      | 80.66       | 79.51       |

Setup of the measured rows (all fp32, one process per run on a busy 2-core CPU, 8-18 min a run):
- Encoder: RoFormer (rotary), hidden 128, 4 layers, 4 heads, FFN 512, char vocab of 8,000 built by
  `tokenization.vocab.build_char_vocab` from the pretraining corpus plus the sentences (texts only, no
  labels) of PD example.dev and CLUENER train/dev; the same random initialization for (a) and as (b)'s start;
  GlobalPointer head_size 64, CRF lr multiplier 100, dropout 0.1, AdamW lr 1e-3 (linear decay,
  50/100 warmup steps), batch 16, seed 42.
- (b) pretraining: `pretrain/run_mlm.py` (whole-word masking, 2 processes) on
  ../shared/data/corpus clue_corpus_small + peoples_daily_1998 (POS tags stripped; 2.55M tokens
  packed at length 128), 300 steps of 32 x 128 tokens (0.5 epoch), lr 2e-3: MLM loss 8.83 -> 6.23.
  Far from a converged model, which is why (b) gains only 0-5 points; the published rows use
  BERT-base pretrained on billions of characters.
- People's Daily (PD): ../shared/data/ner/people_daily/example.dev (2,318 sentences, the only split
  here) split 80/20 by a seeded shuffle (--dev_fraction 0.2 --split_seed 0): 1,854 train / 464 dev
  sentences (711 dev entities); 6 epochs = 696 steps at --max_seq_length 128 (145 of 3,108 train
  entities cut off), dev tagged at full length. configs/finetune/ner_people_daily.json.
- CLUENER: train 10,748 / dev 1,343 (3,072 entities; 4 of them are not on token boundaries, e.g.
  "ac米兰" inside the WordPiece word "vsac", and count as misses); 1 epoch = 672 steps at length 64.
  configs/finetune/ner_cluener.json. Efficient GlobalPointer converges slowest of the three heads
  (with the random encoder on PD its dev F1 stays below GP's for the first 4 of 6 epochs), and after
  one CLUENER epoch it is still at 75% precision, 11% recall: that column measures an unconverged
  run, not the head's ceiling.
- The commands that produced the table are in the README ("NER results").
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from suji_models import SujiConfig
from suji_models.tasks.ner import (
    HEADS,
    SujiForNer,
    collate,
    encode_examples,
    encode_windows,
    encoder_config,
    entity_counts,
    entity_scores,
    entity_types,
    predict,
    predict_encoded,
    read_ner,
    read_texts,
    scores_from_counts,
    set_ner_config,
    split_examples,
    write_predictions,
)
from suji_models.training.data import RowSource
from suji_models.training.loop import TrainArgs, deepspeed_config, finish_distributed, init_distributed, train
from suji_models.training.options import parse_args

# Development data of this workplace (not part of the repository): ../shared/data/ner
SHARED_NER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ner"
DATASETS = {
    "people_daily": {"train_file": SHARED_NER / "people_daily" / "example.dev", "dev_file": None, "format": "bio"},
    "cluener": {"train_file": SHARED_NER / "cluener2020" / "train.json",
                "dev_file": SHARED_NER / "cluener2020" / "dev.json", "format": "cluener"},
}


@dataclass
class NerArgs:
    train_file: str = ""
    dev_file: str = ""
    format: str = "bio"  # bio | bmes | cluener
    dataset: str = ""  # people_daily | cluener: the development data in ../shared/data/ner
    dev_fraction: float = 0.2  # without --dev_file: the share of --train_file held out (seeded shuffle)
    split_seed: int = 0
    head: str = "global_pointer"  # global_pointer | efficient_global_pointer | crf
    head_size: int = 64
    crf_lr_multiplier: float = 100.0  # the CRF transitions learn this much faster (see suji_models.layers.crf)
    model: str = ""  # Suji or transformers checkpoint folder
    model_preset: str = "roformer-tiny"  # without --model: a randomly initialized encoder
    model_overrides: str = ""  # JSON, e.g. '{"hidden_size": 256, "num_hidden_layers": 4}'
    tokenizer: str = ""  # default: the --model folder
    max_seq_length: int = 128  # training (longer sentences are truncated; their cut-off entities counted)
    eval_max_length: int = 512  # longer texts are read in overlapping windows of this many tokens
    eval_overlap: int | None = None  # tokens shared by neighbouring windows (default: a quarter of a window)
    epochs: float = 10.0  # used when --max_steps is 0
    eval_steps: int = 0  # 0: once per epoch (and after the last step)
    eval_batch_size: int = 64
    do_train: bool = True  # false: evaluate / predict with the --model checkpoint as it is
    predict: str = ""  # texts to tag after training
    predict_output: str = ""  # default OUTPUT_DIR/predictions.jsonl


def load_data(ner: NerArgs):
    """(train examples, dev examples, description of the split)."""
    if ner.dataset:
        if ner.dataset not in DATASETS:
            raise SystemExit(f"--dataset must be one of {sorted(DATASETS)}")
        preset = DATASETS[ner.dataset]
        ner.train_file = ner.train_file or str(preset["train_file"])
        ner.dev_file = ner.dev_file or (str(preset["dev_file"]) if preset["dev_file"] else "")
        ner.format = preset["format"]
    if not ner.do_train:
        return [], read_ner(ner.dev_file, ner.format) if ner.dev_file else [], ""
    if not ner.train_file:
        raise SystemExit("--train_file (or --dataset) is required for training")
    train_examples = read_ner(ner.train_file, ner.format)
    if ner.dev_file:
        return train_examples, read_ner(ner.dev_file, ner.format), f"dev = {ner.dev_file}"
    train_examples, dev = split_examples(train_examples, ner.dev_fraction, ner.split_seed)
    return train_examples, dev, f"{ner.train_file} split {1 - ner.dev_fraction:.0%}/{ner.dev_fraction:.0%} (seed {ner.split_seed})"


def model_config(ner: NerArgs, tokenizer, types) -> SujiConfig | None:
    """The config of a randomly initialized encoder (None when --model gives one)."""
    if ner.model:
        return None
    overrides = json.loads(ner.model_overrides) if ner.model_overrides else {}
    config = SujiConfig.from_preset(ner.model_preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                    **overrides)
    if config.position_embedding_type == "learned":
        config.max_position_embeddings = max(config.max_position_embeddings, ner.max_seq_length)
    return set_ner_config(config, ner.head, types, ner.head_size, ner.crf_lr_multiplier)


def eval_length(ner: NerArgs, config) -> int:
    if config is not None and config.position_embedding_type == "learned":
        return min(ner.eval_max_length, config.max_position_embeddings)
    return ner.eval_max_length


def main(argv=None):
    ner, args = parse_args((NerArgs, TrainArgs), argv, output_dir="runs/ner", max_steps=0, learning_rate=2e-5,
                           per_device_batch_size=16, warmup_steps=0, log_steps=50, save_total_limit=1)
    if ner.head not in HEADS:
        raise SystemExit(f"--head must be one of {HEADS}")
    rank, world = init_distributed()
    ds_config = deepspeed_config(args, world)  # a contradicting DeepSpeed JSON fails here, before any data work
    if ds_config.get("zero_optimization", {}).get("stage") == 3:
        raise SystemExit("the NER recipe loads the encoder into a full model: use ZeRO stage 0-2")
    from tokenization import load_tokenizer

    if not (ner.tokenizer or ner.model):
        raise SystemExit("--tokenizer is required with --model_preset (or give --model)")
    tokenizer = load_tokenizer(ner.tokenizer or ner.model)
    train_examples, dev_examples, split = load_data(ner)
    say = print if rank == 0 else (lambda *a, **k: None)

    if not ner.do_train:
        results = evaluate_and_predict(ner, SujiForNer.from_pretrained(ner.model), tokenizer, dev_examples, rank,
                                       Path(args.output_dir))
        finish_distributed()
        return results

    types = entity_types(train_examples)
    config = model_config(ner, tokenizer, types)
    if config is None:
        config = encoder_config(ner.model)
    max_eval = eval_length(ner, config)
    encoded, report = encode_examples(tokenizer, train_examples, types, ner.max_seq_length)
    _, dev_report = encode_examples(tokenizer, dev_examples, types, 10**9)  # alignment only: dev is read in windows
    mine = list(range(rank, len(dev_examples), world))  # each rank tags a slice; counts are summed
    dev_windows = encode_windows(tokenizer, [dev_examples[i].text for i in mine], max_eval, ner.eval_overlap)
    say(f"data: {len(train_examples)} train / {len(dev_examples)} dev sentences ({split}); types {types}")
    say(f"train: {report.summary()}")
    say(f"dev:   {dev_report.summary()} (the dev metric counts these as missed)")
    rows = [e.as_row() for e in encoded if any(e.label_mask)]
    source = RowSource(rows, args.per_device_batch_size, args.seed)
    steps_per_epoch = math.ceil(len(rows) / (args.per_device_batch_size * args.gradient_accumulation_steps * world))
    if not args.max_steps:
        args.max_steps = max(1, math.ceil(ner.epochs * steps_per_epoch))
    say(f"training {args.max_steps} steps ({args.max_steps / steps_per_epoch:.1f} epochs of {steps_per_epoch}), "
        f"head {ner.head}, evaluating every {ner.eval_steps or steps_per_epoch} steps")

    def batches(index, rank, world):
        return collate(source.rows(index, rank, world), tokenizer.pad_token_id, ner.head, len(types))

    def make_model():
        if ner.model:
            return SujiForNer.from_encoder(ner.model, ner.head, types, ner.head_size, ner.crf_lr_multiplier)
        return SujiForNer(config)

    history = []

    def evaluate(engine, step):
        started = time.time()
        predictions = dev_windows.merge(predict_encoded(lambda batch: engine(**batch).logits, engine.module,
                                                        dev_windows.examples, tokenizer.pad_token_id,
                                                        ner.eval_batch_size, engine.device))
        counts = entity_counts([dev_examples[i].entities for i in mine], predictions)
        totals = torch.tensor([counts["", "tp"], counts["", "gold"], counts["", "pred"]], dtype=torch.long)
        dist.all_reduce(totals)
        tp, gold, pred = totals.tolist()
        metrics = scores_from_counts({("", "tp"): tp, ("", "gold"): gold, ("", "pred"): pred})
        metrics = {k: metrics[k] for k in ("f1", "precision", "recall")}
        metrics["seconds"] = time.time() - started
        history.append({"step": step, **metrics})
        return metrics

    started = time.time()
    losses, engine = train(make_model, batches, args, save_files=tokenizer.save_pretrained, evaluate=evaluate,
                           eval_steps=ner.eval_steps or steps_per_epoch, best_metric="f1")
    train_seconds = time.time() - started
    if rank == 0:
        best = Path(args.output_dir) / "best"
        model = SujiForNer.from_pretrained(best).eval()
        params = sum(p.numel() for p in model.parameters())
        record = json.loads((best / "eval_metrics.json").read_text())
        extra = {"split": split, "train_sentences": len(train_examples), "dev_sentences": len(dev_examples),
                 "steps": args.max_steps, "steps_per_epoch": steps_per_epoch, "best_step": record["step"],
                 "parameters": params, "train_seconds": round(train_seconds, 1), "history": history,
                 "alignment": {"train": _report_dict(report), "dev": _report_dict(dev_report)},
                 "loss_first_last": [losses[0][1], losses[-1][1]] if losses else None,
                 "args": {**dataclasses.asdict(ner), **dataclasses.asdict(args)}}
        evaluate_and_predict(ner, model, tokenizer, dev_examples, rank, Path(args.output_dir), extra, max_eval)
    finish_distributed()


def _report_dict(report) -> dict:
    return {"sentences": report.examples, "entities": report.spans, "aligned": report.aligned,
            "unaligned": len(report.unaligned), "truncated": len(report.truncated),
            "unknown_type": len(report.unknown_type), "truncated_sentences": report.truncated_examples}


def evaluate_and_predict(ner, model, tokenizer, dev_examples, rank, output_dir: Path, extra=None, max_length=None):
    """Full dev evaluation (per type) and --predict with a loaded model, on rank 0."""
    if rank != 0:
        return
    model.eval()
    max_length = max_length or eval_length(ner, model.config)
    results = dict(extra or {})
    results.update({"head": model.config.ner_head, "types": model.types})
    if dev_examples:
        predictions = predict(model, tokenizer, [ex.text for ex in dev_examples], max_length, ner.eval_batch_size,
                              overlap=ner.eval_overlap)
        scores = entity_scores([ex.entities for ex in dev_examples], predictions)
        results["dev"] = scores
        for kind, s in scores["per_type"].items():
            print(f"  {kind:>16}: P {s['precision']:.4f} R {s['recall']:.4f} F1 {s['f1']:.4f} ({s['gold']} gold)")
        best = f" (best checkpoint: step {results['best_step']} of {results['steps']})" if "best_step" in results else ""
        print(f"summary: dev f1 {scores['f1']:.4f} precision {scores['precision']:.4f} recall {scores['recall']:.4f}"
              f"{best}", flush=True)
    if ner.predict:
        texts = read_texts(ner.predict)
        out = write_predictions(ner.predict_output or output_dir / "predictions.jsonl", texts,
                                predict(model, tokenizer, texts, max_length, ner.eval_batch_size,
                                        overlap=ner.eval_overlap))
        results["predictions"] = str(out)
        print(f"predictions: {out} ({len(texts)} texts)", flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    return results


if __name__ == "__main__":
    main()
