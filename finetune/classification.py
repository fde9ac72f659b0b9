"""Text classification (single-label, multi-label with ZLPR, soft labels), sentence or sentence pair,
with CAN post-processing reported next to the plain accuracy.

    python finetune/classification.py --config configs/finetune/cls_tnews_pretrained.json
    python finetune/classification.py --train_file ../shared/data/classification/chnsenticorp/train.tsv \
        --dev_file ../shared/data/classification/chnsenticorp/dev.tsv --format tsv \
        --model ../shared/models/suji-roformer-small-zh --output_dir runs/cls-chnsenticorp
    python finetune/classification.py --do_train false --model runs/cls/best --predict texts.txt

Methods (suji_models.tasks.classification, suji_models.losses):
- Single-label: softmax cross-entropy on a linear head over the first token (--pooling cls) or the
  masked mean (--pooling mean).
- Multi-label (labels given as a JSON list per example): ZLPR, "将“softmax+交叉熵”推广到多标签分类问题"
  (kexue.fm/archives/7359), predicting every class scored > 0; soft labels (a JSON object
  {class: probability}) use its soft form, "多标签“Softmax+交叉熵”的软标签版本" (kexue.fm/archives/9064).
  The metric is then micro P/R/F1 of the predicted label sets.
- CAN, "CAN：借助先验分布提升分类性能的简单后处理技巧" (kexue.fm/archives/8728): the predictions whose
  top-k entropy (--can_top_k, normalized by log k) is >= --can_threshold are re-estimated together
  with the confident ones by alternating normalization against the training label prior
  (--can_alpha, --can_iters). Every single-label evaluation reports `accuracy` and `accuracy_can`
  (and the split into confident / low-confidence examples).

Data (--format): `tsv` (a header naming `label`, `text_a` and optionally `text_b`: ChnSentiCorp,
SMP2020-EWECT), `thucnews` (`title<TAB>class id`, class names in class.txt beside the file), `csl`
(`prefix<TAB>title<TAB>discipline`), `json` (JSON lines; --text_field, --label_field, --text_b_field:
FewCLUE TNEWS `sentence` / `label_desc`, IFLYTEK `sentence` / `label_des`). Without --dev_file the
train file is split by a seeded shuffle (THUCNews titles: dev.txt only here). --predict reads one
text per line (or JSON objects with a "text" field) and writes JSONL {text, label, probability,
label_can} (multi-label: {text, labels}).

Training tricks (suji_models.optim; options of every recipe, all off by default): --optimizer adax |
adafactor, --layer_decay, --loss_trick fgm | gradient_penalty | rdrop (--trick_epsilon, --rdrop_alpha; R-Drop
is this recipe's own: single-label only), --child_tuning f | d (--child_tuning_reserve), --ema DECAY. Which of
them ZeRO-3 refuses, and why: suji_models/optim.

Results (dev accuracy %, measured here; one process per run on a heavily shared 2-core CPU):

| FewCLUE TNEWS (15 classes), train_few_all / dev_few_all | accuracy | after CAN | low-confidence rows |
|----------------------------------------------------------|----------|-----------|---------------------|
| random initialization (same shape as the reference)       | 14.30    | 6.83 (*)  | 1098 of 1098        |
| ../shared/models/suji-roformer-small-zh                   | 32.42    | 32.51     | 840 of 1098         |
| ... + R-Drop (--loss_trick rdrop, alpha 4)                | 32.97    | 32.15     | 866 of 1098         |
| ... + ChildTuning-D (--child_tuning d, reserve 0.3)       | 24.04    | 17.12     | 1084 of 1098        |
| ... + EMA of the weights (--ema 0.95)                     | 33.06    | 31.88     | 910 of 1098         |
| ... + FGM on the embeddings (--loss_trick fgm, eps 0.5)    | 32.06    | 28.69     | 963 of 1098         |
| ... + AdaX instead of AdamW (--optimizer adax)            | 32.15    | 30.60     | 922 of 1098         |
| ... + layer-wise lr decay 0.8 (--layer_decay 0.8)         | 27.87    | 24.50     | 1024 of 1098        |
| ... + ChildTuning-F (--child_tuning f, reserve 0.3)       | 28.32    | 22.22     | 1051 of 1098        |
| ... + gradient penalty (--loss_trick gradient_penalty, 1.0) | 29.96  | 19.76     | 1032 of 1098        |
| ... + AdaFactor instead of AdamW (--optimizer adafactor)  | 34.43    | 32.88     | 836 of 1098         |
| published, BERT-base, full CLUE TNEWS (the CAN post)      | 56.80    | 56.86     |                     |

- Commands: `python finetune/classification.py --config configs/finetune/cls_tnews_pretrained.json` and
  `... cls_tnews_random.json` (1,185 train / 1,098 dev titles; 3 epochs = 114 steps of 32, max length 48,
  AdamW lr 2e-4, 10 warmup steps, seed 42; CAN k=3, threshold 0.9, alpha 1, 1 iteration, prior from the
  train labels). ~15 min a run.
- (*) The random encoder leaves every dev row low-confidence; with no confident row, CAN's alternating
  normalization turns every prediction into the prior's top class (6.83% = that class's share). The
  code now leaves predictions unchanged in that case (tests/test_classification.py); the 6.83 is what
  the post's procedure gave.
- The pretrained row gains +0.09 from CAN, the same direction and size as the published +0.06 on TNEWS.
  Far below the published accuracy: a 7.3M-parameter encoder pretrained for 56 minutes, and FewCLUE's
  few-shot train split.
- Tricks (configs/finetune/cls_tnews_pretrained_<trick>.json, otherwise as the
  pretrained row): EMA (decay 0.95: a ~20-step average over this 114-step run; evaluated and saved with the
  averaged weights) +0.64, within what one seed can tell; R-Drop +0.55, likewise; FGM -0.36; AdaX -0.27
  (same lr 2e-4); layer-wise decay 0.8 -4.55 (the lower layers learn at 0.8^k of the rate: too slow for 114
  steps); ChildTuning-F (a fresh random 30% gradient mask each step) -4.10; the input-gradient penalty
  (epsilon 1) -2.46; ChildTuning-D (Fisher over the first
  16 training batches, 30% of the encoder-layer gradients kept, AdamW) -8.4 at this short schedule.
  CAN needs a confident set to align against: with 14 confident rows of 1,098 (ChildTuning-D) it
  pulls predictions to the prior and loses 6.9 points.
  AdaFactor (factored second moment, update clipping, no relative step, the same lr 2e-4) +2.01, within what
  one seed can tell; it runs without ZeRO only (see suji_models/optim).

The other sets, random initialization vs the reference encoder (dev accuracy %, before / after CAN, and the
low-confidence rows CAN adjusted; same settings as TNEWS but where the row says otherwise):

| dataset (classes): train / dev used                         | random init          | reference encoder    |
|-------------------------------------------------------------|----------------------|----------------------|
| ChnSentiCorp (2): 3,000 of 9,600 train / dev 1,200           | 63.08 / 63.08 (1200) | 76.67 / 77.25 (396)  |
| THUCNews titles (10): 3,000 of 8,000 / 2,000 (80/20, seed 0) | 58.05 / 53.60 (970)  | 70.10 / 70.45 (367)  |
| CSL discipline (13): 3,000 of 8,000 train / dev 1,000        | 52.80 / 52.80 (445)  | 62.20 / 61.80 (203)  |
| SMP2020-EWECT usual (6): 3,000 of 27,766 train / dev 2,000    | 50.00 / 49.35 (1188) | 57.60 / 57.95 (592)  |
| FewCLUE IFLYTEK (119): train_few_all 3,024 / dev_few_all 1,373 | 3.06 / 3.06 (1373)   | 20.03 / 12.38 (1360) |
| published, BERT-base, full CLUE IFLYTEK (the CAN post)       |                      | 60.06 / 60.52        |

- Configs: configs/finetune/cls_{chnsenticorp,thucnews,cslctg,ewect,iflytek}_{random,pretrained}.json. The
  training subsets are --train_limit 3000 (a seeded subset, seed 0, drawn after the split); ChnSentiCorp 1 epoch at
  max length 128 (94 steps), THUCNews and CSL 2 epochs at 32 (188 steps), EWECT 2 epochs at 64 (188 steps),
  IFLYTEK 2 epochs at 128 (190 steps); AdamW lr 2e-4, batch 32, seed 42; CAN k=3, threshold 0.9, alpha 1.
  2-11 minutes a run on the shared 2-core CPU.
- The reference encoder beats random initialization on every set (+7.6 to +17.0 points). CAN helps where the
  confident set is large (ChnSentiCorp +0.58, THUCNews +0.35, EWECT +0.35, TNEWS +0.09, the published
  direction), changes little on CSL (-0.40 with 203 low-confidence rows) and hurts where almost every row is
  low-confidence: IFLYTEK's 119 classes leave 1,360 of 1,373 rows
  above the entropy threshold, so the alternating normalization has nothing confident to align against
  (-7.65). A random encoder's rows are mostly low-confidence too; with none confident, the predictions are left
  unchanged (ChnSentiCorp random).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from suji_models.tasks.batching import length_batches
from suji_models.tasks.classification import (
    SujiForTextClassification,
    TextExample,
    can_adjust,
    can_report,
    class_names,
    collate_texts,
    is_multi_label,
    label_names_of,
    label_prior,
    read_columns,
    read_json_labelled,
    read_label_tsv,
    set_classification_config,
)
from suji_models.tasks.metrics import scores_from_counts, set_counts
from suji_models.tasks.output import write_jsonl
from suji_models.tasks.readers import read_texts
from suji_models.training.finetune import Task, run
from suji_models.training.options import option


@dataclass
class ClassificationOptions:
    format: Literal["tsv", "thucnews", "csl", "json"] = option("tsv", "data format (see the module docstring)")
    text_field: str = option("sentence", "json: the text field")
    label_field: str = option("label_desc", "json: the label field (a name, a list of names, or {name: p})")
    text_b_field: str = option("", "json: the second text of a pair (empty: single texts)")
    pooling: Literal["cls", "mean"] = option("cls", "sentence vector for the head")
    can_top_k: int = option(3, "CAN: entropy over the top k probabilities")
    can_threshold: float = option(0.9, "CAN: rows with normalized top-k entropy >= this are adjusted")
    can_alpha: float = option(1.0, "CAN: exponent alpha of the alternating normalization")
    can_iters: int = option(1, "CAN: rounds of alternating normalization")


class ClassificationTask(Task):
    Options = ClassificationOptions
    model_class = SujiForTextClassification
    best_metric = "accuracy"
    supports_rdrop = True
    defaults = dict(output_dir="runs/cls", epochs=3.0, learning_rate=2e-5, per_device_batch_size=32,
                    max_seq_length=128)

    # ---- data ----------------------------------------------------------------------------------
    def read(self, path):
        o = self.options
        if o.format == "tsv":
            return read_label_tsv(path)
        if o.format == "thucnews":
            return read_columns(path, 0, 1, 2, class_names(Path(path).parent / "class.txt"))
        if o.format == "csl":
            return read_columns(path, 1, 2, 3)
        return read_json_labelled(path, o.text_field, o.label_field, o.text_b_field or None)

    def read_predict(self, path):
        return [TextExample(text) for text in read_texts(path)]

    def describe(self, train, dev):
        if not train:  # evaluation / prediction only: the checkpoint's config knows the classes
            return
        self.multi_label = is_multi_label(train)
        self.soft_labels = self.multi_label and any(isinstance(x, tuple) for ex in train for x in ex.label)
        self.labels = label_names_of(train, dev)
        unseen = sorted(set(self.labels) - set(label_names_of(train)))
        if unseen:
            self.say(f"{len(unseen)} dev classes never seen in training (their examples count as errors): {unseen}")
            self.notes["dev_classes_not_in_train"] = unseen
        if self.multi_label:
            self.best_metric = "f1"
        self.say(f"{len(self.labels)} classes, {'multi' if self.multi_label else 'single'}-label"
                 + (" (soft targets)" if self.soft_labels else ""))

    def encode(self, examples):
        return list(examples)  # tokenized per batch in collate (texts are short; pairs need both)

    def collate(self, rows):
        index = {name: i for i, name in enumerate(self.labels)}
        return collate_texts(self.tokenizer, rows, self.args.max_seq_length, index)

    # ---- model ---------------------------------------------------------------------------------
    def configure(self, config, train):
        config = set_classification_config(config, self.labels, self.multi_label, self.soft_labels,
                                           self.options.pooling)
        if not self.multi_label:  # CAN's prior travels with the checkpoint (prediction-only runs use it)
            config.cls_prior = label_prior(train, self.labels).tolist()
        return config

    def step_hooks(self, args, rows=()):
        if self.tricks.loss_trick == "rdrop" and self.multi_label:
            raise ValueError("R-Drop's KL is over a softmax: single-label classification only")
        return super().step_hooks(args, rows)

    # ---- evaluation and prediction -------------------------------------------------------------
    def predict(self, model, examples, forward):
        """Per example: its probability vector (softmax; multi-label: the classes scored > 0)."""
        self.config = model.config
        out = [None] * len(examples)
        for chunk in length_batches([len(ex.text) + len(ex.text_b or "") for ex in examples],
                                    self.args.eval_batch_size):
            batch = collate_texts(self.tokenizer, [examples[i] for i in chunk], self.args.max_seq_length, None)
            logits = forward(batch).logits.float().cpu()
            if model.config.cls_multi_label:
                rows = [tuple(np.flatnonzero(row > 0).tolist()) for row in logits.numpy()]
            else:
                rows = [tuple(row) for row in torch.softmax(logits, -1).numpy().tolist()]
            for i, row in zip(chunk, rows):
                out[i] = row
        return out

    def metric(self, examples, predictions):
        names = self.config.cls_labels
        if self.config.cls_multi_label:
            gold = [[x[0] if isinstance(x, tuple) else x for x in ex.label
                     if not isinstance(x, tuple) or x[1] >= 0.5] for ex in examples]
            return set_counts(gold, [[names[i] for i in p] for p in predictions])
        index = {n: i for i, n in enumerate(names)}
        # accuracy before / after CAN needs every probability row: the keys carry them, counts add up
        return Counter((probs, index.get(ex.label, -1)) for ex, probs in zip(examples, predictions))

    def scores(self, counts):
        if self.config.cls_multi_label:
            return scores_from_counts(counts)
        rows = [key for key, n in counts.items() for _ in range(n)]
        if not rows:
            return {"accuracy": 0.0}
        probs = np.array([r[0] for r in rows])
        gold = np.array([r[1] for r in rows])
        o = self.options
        report = can_report(probs, gold, self.prior(), o.can_top_k, o.can_threshold, o.can_alpha, o.can_iters)
        return {**report, "examples": len(rows)}

    def prior(self) -> np.ndarray:
        prior = getattr(self.config, "cls_prior", None)
        n = len(self.config.cls_labels)
        return np.asarray(prior) if prior else np.full(n, 1.0 / n)

    def write_predictions(self, path, examples, predictions):
        names = self.config.cls_labels
        if self.config.cls_multi_label:
            return write_jsonl(path, ({"text": ex.text, "labels": [names[i] for i in p]}
                                      for ex, p in zip(examples, predictions)))
        probs = np.array(predictions)
        o = self.options
        adjusted, _ = can_adjust(probs, self.prior(), o.can_top_k, o.can_threshold, o.can_alpha, o.can_iters)
        return write_jsonl(path, ({"text": ex.text, "label": names[int(p.argmax())], "probability": float(p.max()),
                                   "label_can": names[int(q.argmax())]}
                                  for ex, p, q in zip(examples, probs, adjusted)))


def main(argv=None):
    return run(ClassificationTask, argv)


if __name__ == "__main__":
    main()
