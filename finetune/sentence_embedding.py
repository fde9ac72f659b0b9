"""Sentence embeddings: CoSENT or the Sentence-BERT baseline on sentence pairs, with BERT-whitening,
scored by the Spearman correlation between cos(u, v) and the gold label.

    python finetune/sentence_embedding.py --config configs/finetune/sim_stsb_cosent_pretrained.json
    python finetune/sentence_embedding.py --do_train false --model ../shared/models/suji-roformer-small-zh \
        --dev_file ../shared/data/similarity/Chinese-STS-B/sts-b-dev.txt --whitening true   # no training
    python finetune/sentence_embedding.py --do_train false --model runs/sim/best --predict texts.txt \
        --predict_kind embeddings          # one sentence per line -> runs/sim/embeddings.npy
    python finetune/sentence_embedding.py --do_train false --model runs/sim/best --predict pairs.txt  # pair scores

Methods (suji_models.tasks.similarity, suji_models.tasks.whitening, suji_models.losses.cosent_loss):
- --objective cosent: "CoSENT（一）：比Sentence-BERT更有效的句向量方案" (kexue.fm/archives/8847), the ranking
  loss log(1 + sum_{label_i < label_j} e^{20 (cos_i - cos_j)}) on the pairs of each batch.
- --objective sbert: Sentence-BERT, softmax over Linear([u, v, |u - v|]) (integer labels 0..n-1).
- --pooling cls | mean | first-last-avg (the first Transformer layer's and the last layer's outputs
  averaged, then the masked mean).
- --whitening true: "你可能不需要BERT-flow：一个线性变换媲美BERT-flow" (kexue.fm/archives/8069), a linear map
  to zero mean and identity covariance (optionally --whitening_dim k) fitted on unlabelled sentences:
  the training sentences (at most --whitening_fit_limit, seeded), or --whitening_fit_file, or, with
  nothing to train on, the evaluated sentences themselves (labels are never used). Every evaluation
  then reports `spearman_whitened` beside `spearman`; with --predict the transform used is saved
  beside the predictions (whitening.npz; `Whitening.load`).
For users: `suji_models.tasks.similarity.SentenceEmbedder.from_pretrained(folder).encode(texts)`.

Data: --train_file / --dev_file in --format tsv (`s1<TAB>s2<TAB>label`: LCQMC, AFQMC, Chinese-STS-B),
atec (`id<TAB>s1<TAB>s2<TAB>label`) or pawsx (header `id sentence1 sentence2 label`). Without
--dev_file the train file is split by a seeded shuffle (--dev_fraction, --split_seed): LCQMC (dev.txt
only here), ATEC and PAWS-X (dev_2k only here). --train_limit keeps a seeded subset of the training
pairs (CPU budgets).

--eval_before_training true scores the dev set once with the encoder as loaded (no training): the
"untrained" numbers of a results row come from the same run, split and whitening fit.

Results (Spearman x 100 of cos(u, v) vs the label on dev, measured here; "raw / whitened"):

| encoder and training                                   | STS-B         | LCQMC         |
|--------------------------------------------------------|---------------|---------------|
| random initialization, no training                     | 63.04 / 74.82 | 44.98 / 41.89 |
| random initialization + CoSENT                         | 66.84 / 74.94 | 49.16 / 42.03 |
| suji-roformer-small-zh, no training                    | 57.07 / 74.26 | 35.66 / 42.12 |
| suji-roformer-small-zh + Sentence-BERT (softmax)       | 54.40 / 74.03 | 35.39 / 41.72 |
| suji-roformer-small-zh + CoSENT                        | 66.48 / 74.79 | 52.90 / 44.07 |
| published, BERT-base, test (CoSENT post): SBERT / CoSENT | 66.41 / 80.14 | 78.72 / 78.69 |

- Data: STS-B train 5,231 / dev 1,458 pairs (labels 0-5); LCQMC: dev.txt (the only split here) split
  80/20 with seed 0 (7,042 / 1,760 pairs), of which --train_limit 2,000 training pairs (seed 0) were
  used. Published numbers are on the test sets with full training data.
- Settings (configs/finetune/sim_{stsb,lcqmc}_{cosent,sbert}_pretrained.json, sim_*_untrained_random.json):
  first-last-avg pooling, max length 64, batch 32 pairs, 1 epoch (STS-B 164 steps, LCQMC 63 steps),
  AdamW lr 1e-4, 20 warmup steps, seed 42; the "no training" rows are --eval_before_training (the same
  run, same dev pairs; the random row's config stops after one step). Whitening: all 256 dimensions,
  fitted on at most 4,000 training sentences (no labels). One process per run on a heavily shared
  2-core CPU: 13-47 minutes a run.
- Command: `python finetune/sentence_embedding.py --config configs/finetune/sim_stsb_cosent_pretrained.json`
  (and the other config files).
- Findings: CoSENT beats Sentence-BERT on both sets (STS-B 66.48 vs 54.40, LCQMC 52.90 vs 35.39 raw),
  the published direction on STS-B; one epoch of the softmax objective even lowers the raw STS-B
  cosines below the untrained encoder (57.07 -> 54.40), as the CoSENT post argues: it does not train
  the cosine that prediction uses. Whitening lifts the untrained pretrained encoder strongly (STS-B
  +17.2, LCQMC +6.5), as the BERT-whitening post reports for BERT; after CoSENT training it still helps
  on STS-B (+8.3) but hurts on LCQMC (-8.8). Without training, a random char-level encoder scores
  above the small pretrained one on the raw cosines (STS-B 63.04 vs 57.07, LCQMC 44.98 vs 35.66):
  character overlap already carries much of these sets, and the reference encoder (7.3M parameters,
  56 minutes of MLM) is far from BERT. Trained with CoSENT, the random encoder ends level with the
  reference one on STS-B (66.84 vs 66.48) and below it on LCQMC (49.16 vs 52.90).

| encoder and training (raw / whitened)                  | PAWS-X        | AFQMC         | ATEC          |
|--------------------------------------------------------|---------------|---------------|---------------|
| random initialization, no training                     | 12.44 / 13.74 | 14.32 / 13.08 | 24.01 / 26.83 |
| random initialization + CoSENT                         | 12.67 / 13.82 | 14.95 / 13.02 | 26.55 / 26.81 |
| suji-roformer-small-zh, no training                    | 11.00 / 14.79 | 15.31 / 14.57 | 26.01 / 28.09 |
| suji-roformer-small-zh + Sentence-BERT (softmax)       | 10.60 / 14.69 | 14.59 / 14.61 | 24.43 / 27.95 |
| suji-roformer-small-zh + CoSENT                        | 11.43 / 13.27 | 17.20 / 14.35 | 30.42 / 28.04 |
| published, BERT-base, test (CoSENT post): SBERT / CoSENT | 46.86 / 60.00 | -           | - / 49.74     |

- Data: PAWS-X dev_2k (the only split here) split 80/20 with seed 0 (1,600 / 400 pairs); AFQMC train.txt
  (2,000 pairs by --train_limit, seed 0) / dev.txt (4,316 pairs); ATEC atec_nlp_sim_train.csv split 95/5 with
  seed 0 (1,967 dev pairs; 2,000 of the 37,379 training pairs by --train_limit, seed 0). Settings as above
  (1 epoch: PAWS-X 50 steps, AFQMC and ATEC 63 steps). Configs: configs/finetune/sim_{pawsx,afqmc,atec}_
  {cosent_pretrained,sbert_pretrained,cosent_random,untrained_random}.json (and sim_{stsb,lcqmc}_cosent_random.json
  for the first table). 2-5 minutes a run.
- Findings: CoSENT beats Sentence-BERT on every set measured (STS-B, LCQMC, PAWS-X, AFQMC, ATEC: +12.1, +17.5,
+0.8, +2.6, +6.0 raw), and Sentence-BERT's softmax objective leaves the raw cosines at or below the untrained
encoder's, as the CoSENT post argues. The reference encoder gains more from CoSENT than the random one on every
set (STS-B +9.4 vs +3.8, LCQMC +17.2 vs +4.2). PAWS-X pairs share almost all their characters (word-order
paraphrase vs. not), so every encoder here stays near 11-15 and one epoch of either objective does not move it;
the published gain needs a BERT-base encoder. Whitening lifts the untrained encoders on STS-B, LCQMC
(reference), PAWS-X and ATEC, not on AFQMC; after CoSENT training it helps only on STS-B and PAWS-X.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from suji_models.tasks.batching import length_batches, pad_to_longest
from suji_models.tasks.output import write_jsonl
from suji_models.tasks.readers import read_texts, subsample
from suji_models.tasks.similarity import (
    OBJECTIVES,
    POOLINGS,
    SentencePair,
    SujiForSentenceEmbedding,
    cosine_rows,
    read_pairs,
    sbert_classes,
    set_sentence_config,
    spearman,
)
from suji_models.tasks.whitening import Whitening
from suji_models.training.finetune import Task, run
from suji_models.training.options import option


@dataclass
class SimilarityOptions:
    format: Literal["tsv", "atec", "pawsx"] = option("tsv", "pair file format")
    objective: Literal[OBJECTIVES] = option("cosent", "training loss: cosent or sbert (softmax over (u, v, |u-v|))")
    pooling: Literal[POOLINGS] = option("first-last-avg", "sentence vector from the encoder outputs")
    cosent_scale: float = option(20.0, "CoSENT's scale lambda on the cosines")
    whitening: bool = option(False, "also evaluate with BERT-whitening (spearman_whitened)")
    whitening_dim: int = option(0, "keep this many whitened dimensions (0: all)")
    whitening_fit_file: str = option("", "pair file whose sentences fit the whitening (default: the training "
                                         "sentences, or the evaluated ones when not training)")
    whitening_fit_limit: int = option(4000, "fit the whitening on at most this many sentences (seeded subset)")
    eval_before_training: bool = option(False, "evaluate the encoder once before training (results: before_training)")
    predict_kind: Literal["scores", "embeddings"] = option("scores", "--predict: a pair file -> JSONL of cosines, "
                                                                     "or one text per line -> embeddings .npy")


class SimilarityTask(Task):
    Options = SimilarityOptions
    model_class = SujiForSentenceEmbedding
    best_metric = "spearman"
    defaults = dict(output_dir="runs/sim", epochs=1.0, learning_rate=2e-5, per_device_batch_size=32,
                    max_seq_length=64)

    # ---- data ----------------------------------------------------------------------------------
    def read(self, path):
        return read_pairs(path, self.options.format)

    def read_predict(self, path):
        if self.options.predict_kind == "embeddings":
            return read_texts(path)
        return self.read(path)

    def describe(self, train, dev):
        o = self.options
        self.train_pairs, self.dev_pairs = train, dev
        fit_pairs = read_pairs(o.whitening_fit_file, o.format) if o.whitening_fit_file else (train or dev)
        texts = sorted({p.text_a for p in fit_pairs} | {p.text_b for p in fit_pairs})
        self.fit_texts = subsample(texts, o.whitening_fit_limit, 0)
        if o.whitening:
            source = o.whitening_fit_file or ("training" if train else "evaluated (unlabelled)")
            self.notes["whitening_fit"] = f"{len(self.fit_texts)} {source} sentences"

    def encode(self, examples):
        cut = dict(max_length=self.args.max_seq_length, truncation=True)
        a = self.tokenizer([p.text_a for p in examples], **cut)["input_ids"]
        b = self.tokenizer([p.text_b for p in examples], **cut)["input_ids"]
        return [{"a": x, "b": y, "label": p.label} for x, y, p in zip(a, b, examples)]

    def collate(self, rows):
        sentences = [{"input_ids": r["a"]} for r in rows] + [{"input_ids": r["b"]} for r in rows]
        input_ids = pad_to_longest(sentences, "input_ids", self.tokenizer.pad_token_id)
        lengths = torch.tensor([len(s["input_ids"]) for s in sentences])
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": torch.tensor([r["label"] for r in rows], dtype=torch.float32)}

    # ---- model ---------------------------------------------------------------------------------
    def configure(self, config, train):
        o = self.options
        classes = sbert_classes(train) if o.objective == "sbert" else 2
        return set_sentence_config(config, o.pooling, o.objective, classes, o.cosent_scale)

    def build_model(self, config, path):
        model = super().build_model(config, path)
        if self.options.eval_before_training and not any(hasattr(p, "ds_id") for p in model.parameters()):
            # the same dev set, scored by the encoder as it comes (pretrained or random), raw and whitened;
            # every rank scores all of it (no collective), so the numbers agree everywhere
            was_training = model.training
            model.eval()
            with torch.no_grad():
                forward = lambda batch: model(**batch)  # noqa: E731
                scores = self.scores(self.metric(self.dev_pairs, self.predict(model, self.dev_pairs, forward)))
            model.train(was_training)
            self.notes["before_training"] = scores
            self.say("before training: " + " ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
        return model

    # ---- evaluation and prediction -------------------------------------------------------------
    def vectors(self, texts, forward) -> np.ndarray:
        """Pooled vectors of `texts` (length-batched, returned in order) through the driver's forward."""
        ids = self.tokenizer(list(texts), max_length=self.args.max_seq_length, truncation=True)["input_ids"]
        out = [None] * len(ids)
        for chunk in length_batches([len(x) for x in ids], self.args.eval_batch_size):
            rows = [{"input_ids": ids[i]} for i in chunk]
            input_ids = pad_to_longest(rows, "input_ids", self.tokenizer.pad_token_id)
            lengths = torch.tensor([len(r["input_ids"]) for r in rows])
            mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
            vectors = forward({"input_ids": input_ids, "attention_mask": mask, "encode_only": True,
                               "pooling": self.options.pooling}).vectors
            for i, vector in zip(chunk, vectors.float().cpu().numpy()):
                out[i] = vector
        return np.stack(out) if out else np.zeros((0, 0), np.float32)

    def fit_whitening(self, forward) -> Whitening:
        self.whitening = Whitening.fit(self.vectors(self.fit_texts, forward), self.options.whitening_dim or None)
        return self.whitening

    def predict(self, model, examples, forward):
        if self.options.predict_kind == "embeddings" and isinstance(examples[0], str):
            vectors = self.vectors(examples, forward)
            if self.options.whitening:
                vectors = self.fit_whitening(forward).apply(vectors)
            return list(vectors)
        texts = sorted({p.text_a for p in examples} | {p.text_b for p in examples})
        index = {t: i for i, t in enumerate(texts)}
        vectors = self.vectors(texts, forward)
        a = [index[p.text_a] for p in examples]
        b = [index[p.text_b] for p in examples]
        raw = cosine_rows(vectors[a], vectors[b])
        if not self.options.whitening:
            return [(float(x), None) for x in raw]
        whitening = self.fit_whitening(forward)
        white = whitening.apply(vectors)
        return [(float(x), float(y)) for x, y in zip(raw, cosine_rows(white[a], white[b]))]

    def metric(self, examples, predictions):
        # Spearman needs every (score, label), not a sum: the counter's keys carry them, counts add up
        return Counter((raw, white, p.label) for p, (raw, white) in zip(examples, predictions))

    def scores(self, counts):
        rows = [key for key, n in counts.items() for _ in range(n)]
        if not rows:
            return {"spearman": 0.0, "pairs": 0}
        labels = [r[2] for r in rows]
        out = {"spearman": 100 * spearman([r[0] for r in rows], labels), "pairs": len(rows)}
        if rows[0][1] is not None:
            out["spearman_whitened"] = 100 * spearman([r[1] for r in rows], labels)
        return out

    def write_predictions(self, path, examples, predictions):
        if getattr(self, "whitening", None) is not None:  # the transform the predictions used, beside them
            self.whitening.save(Path(path).parent / "whitening.npz")
        if self.options.predict_kind == "embeddings":
            path = Path(path).with_name("embeddings.npy") if str(path).endswith(".jsonl") else Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.stack(predictions).astype(np.float32))
            return path
        return write_jsonl(path, ({"text_a": p.text_a, "text_b": p.text_b, "cosine": raw,
                                   **({"cosine_whitened": white} if white is not None else {})}
                                  for p, (raw, white) in zip(examples, predictions)))


def main(argv=None):
    return run(SimilarityTask, argv)


if __name__ == "__main__":
    main()
