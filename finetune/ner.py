"""Named entity recognition: GlobalPointer, Efficient GlobalPointer or a CRF on any Suji /
transformers encoder, trained with Suji's DeepSpeed loop (eval each epoch, best checkpoint kept).

    ./launch.sh finetune ner --config configs/finetune/ner_people_daily.json --model runs/mlm/final
    deepspeed --num_gpus 8 finetune/ner.py --train_file train.bio --dev_file dev.bio --format bio \
        --model path/to/chinese-bert --head efficient_global_pointer --output_dir runs/ner
    python finetune/ner.py --do_train false --model runs/ner/best --predict texts.txt   # tag new text

Data: --train_file / --dev_file in --format bio (People's Daily, Weibo), bmes (MSRA, Resume) or
cluener (CLUENER JSON). Without --dev_file the train file is split by a seeded shuffle
(--dev_fraction, --split_seed). Entities are character spans (end exclusive);
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
Options: `--help` (NerOptions below, the driver's FinetuneArgs and the loop's TrainArgs; --key value
overrides --config). The run itself is suji_models.training.finetune (the shared driver).

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

from dataclasses import dataclass
from typing import Literal

from suji_models.tasks.ner import (
    HEADS,
    NerExample,
    SujiForNer,
    collate,
    encode_examples,
    encode_windows,
    entity_counts,
    entity_types,
    predict_encoded,
    read_ner,
    read_texts,
    set_ner_config,
    write_predictions,
)
from suji_models.training.finetune import Task, run
from suji_models.training.options import option


@dataclass
class NerOptions:
    format: Literal["bio", "bmes", "cluener"] = option("bio", "data format: bio (People's Daily, Weibo), bmes (MSRA, "
                                                              "Resume) or cluener (CLUENER JSON)")
    head: Literal[HEADS] = option("global_pointer", "the tagging head")
    head_size: int = option(64, "GlobalPointer query/key size per type")
    crf_lr_multiplier: float = option(100.0, "CRF transitions learn this much faster (see suji_models.layers.crf)")
    eval_max_length: int = option(512, "dev / predicted texts longer than this many tokens are read in windows")
    eval_overlap: int | None = option(None, "tokens shared by neighbouring windows (default: a quarter of a window)")


class NerTask(Task):
    Options = NerOptions
    model_class = SujiForNer
    defaults = dict(output_dir="runs/ner", epochs=10.0)

    def read(self, path):
        return read_ner(path, self.options.format)

    def read_predict(self, path):
        return [NerExample(text) for text in read_texts(path)]

    def describe(self, train, dev):
        self.types = entity_types(train)
        self.encoded, report = encode_examples(self.tokenizer, train, self.types, self.args.max_seq_length)
        _, dev_report = encode_examples(self.tokenizer, dev, self.types, 10**9)  # alignment only: dev is windowed
        self.say(f"types {self.types}\ntrain: {report.summary()}\ndev:   {dev_report.summary()} (counted as missed)")
        self.notes["alignment"] = {"train": report.as_dict(), "dev": dev_report.as_dict()}

    def configure(self, config, train):
        o = self.options
        return set_ner_config(config, o.head, self.types, o.head_size, o.crf_lr_multiplier)

    def encode(self, examples):
        return [e.as_row() for e in self.encoded if any(e.label_mask)]

    def collate(self, rows):
        return collate(rows, self.tokenizer.pad_token_id, self.options.head, len(self.types))

    def predict(self, model, examples, forward):
        length = self.options.eval_max_length
        if model.config.position_embedding_type == "learned":
            length = min(length, model.config.max_position_embeddings)
        windows = encode_windows(self.tokenizer, [e.text for e in examples], length, self.options.eval_overlap)
        found = predict_encoded(lambda batch: forward(batch).logits, model, windows.examples,
                                self.tokenizer.pad_token_id, self.args.eval_batch_size)
        return windows.merge(found)

    def metric(self, examples, predictions):
        return entity_counts([e.entities for e in examples], predictions)

    def write_predictions(self, path, examples, predictions):
        return write_predictions(path, [e.text for e in examples], predictions)


if __name__ == "__main__":
    run(NerTask)
