"""Named entity recognition: GlobalPointer, Efficient GlobalPointer or a CRF on any Suji /
transformers encoder, a task on the shared finetune driver (suji_models.training.finetune).

    ./launch.sh finetune ner --config configs/finetune/ner_pd_gp_pretrained.json
    deepspeed --num_gpus 8 finetune/ner.py --train_file train.bio --dev_file dev.bio --format bio \
        --model path/to/chinese-bert --head efficient_global_pointer --output_dir runs/ner
    python finetune/ner.py --do_train false --model runs/ner/best --predict texts.txt   # tag new text

Data: --format bio (People's Daily, Weibo), bmes (MSRA, Resume) or cluener (CLUENER JSON).
Entities are character spans (end exclusive); spans that do not align with tokens or are cut off by
--max_seq_length are counted and printed, and still count as misses: the dev metric (entity-level
micro P/R/F1 on exact (start, end, type), equal to seqeval's on BIO data) is computed against the
original spans, dev texts read whole (in windows past --eval_max_length). --predict takes one text
per line or JSON objects with "text" and writes JSONL {text, entities: [{start, end, type, text}]}.

Results: entity F1 on dev (%), People's Daily example.dev (2,318 sentences, the only split here) split
80/20 by --split_seed 0 into 1,854 train / 464 dev sentences (711 dev entities); 4 epochs (464 steps,
batch 16, length 128), AdamW lr 1e-3, 50 warm-up steps, seed 42; one CPU process, fp32. Encoder: the
reference RoFormer ../shared/models/suji-roformer-small-zh (7.3M parameters, 1,500 MLM steps, see its
README) or the same shape randomly initialized. One config per row: configs/finetune/ner_pd_<head>_<init>.json,
run as `python finetune/ner.py --config configs/finetune/ner_pd_gp_pretrained.json`.

| encoder                                   | GP    | EGP            | CRF            |
|-------------------------------------------|-------|----------------|----------------|
| random initialization                     | 0.00  | not measured   | 55.45          |
| reference encoder (suji-roformer-small-zh) | 69.89 | not measured   | 69.81          |
| published, BERT-base (PD test)            | 95.51 | 95.36          | 95.46          |

With random initialization GlobalPointer learns nothing in 4 epochs at this size and learning rate (the
loss stays near 2 and no span scores above the threshold) while the CRF reaches 55.45; the pretrained encoder reaches 69.89 with GlobalPointer (P 74.13, R 66.10) and 69.81 with the CRF
(P 72.11, R 67.65).
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
    entity_counts,
    entity_types,
    predict,
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
        return predict(model, self.tokenizer, [e.text for e in examples], length, self.args.eval_batch_size,
                       overlap=self.options.eval_overlap, forward=forward)

    def metric(self, examples, predictions):
        return entity_counts([e.entities for e in examples], predictions)

    def write_predictions(self, path, examples, predictions):
        return write_predictions(path, [e.text for e in examples], predictions)


if __name__ == "__main__":
    run(NerTask)
