"""Two test-only recipes on the finetune driver, one of each evaluation kind:

- `classify`: sentence classification (TSV `label<TAB>text`), scored from logits, accuracy as the
  best metric (counts keyed by plain strings);
- `copy`: UniLM seq2seq (TSV `source<TAB>target`), evaluated by generating, exact match.

    python tests/finetune_toy.py classify --train_file t.tsv --tokenizer vocab.txt ...
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from suji_models import SujiForSequenceClassification, SujiForUniLM  # noqa: E402
from suji_models.tasks.batching import length_batches, pad_rows  # noqa: E402
from suji_models.tasks.readers import DataError  # noqa: E402
from suji_models.training.finetune import Task, run  # noqa: E402
from suji_models.training.options import option  # noqa: E402


def read_tsv(path):
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}:{n}: expected two tab-separated fields")
        rows.append(tuple(parts))
    return rows


@dataclass
class ClassifyOptions:
    labels: str = option("0,1", "label names, comma-separated")


class Classify(Task):
    Options = ClassifyOptions
    model_class = SujiForSequenceClassification
    best_metric = "accuracy"

    def read(self, path):
        return read_tsv(path)

    def configure(self, config, train):
        config.num_labels = len(self.options.labels.split(","))
        return config

    def encode(self, examples):
        labels = self.options.labels.split(",")
        ids = self.tokenizer([text for _, text in examples], truncation=True, max_length=self.args.max_seq_length)
        return [{"input_ids": i, "labels": labels.index(label)} for i, (label, _) in zip(ids["input_ids"], examples)]

    def collate(self, rows):
        batch = pad_rows(rows, {"input_ids": self.tokenizer.pad_token_id})
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch

    def predict(self, model, examples, forward):
        rows = [{"input_ids": ids} for ids in self.tokenizer([text for _, text in examples], truncation=True,
                                                             max_length=self.args.max_seq_length)["input_ids"]]
        out = [None] * len(rows)
        for chunk in length_batches([len(r["input_ids"]) for r in rows], self.args.eval_batch_size):
            batch = self.collate([rows[i] for i in chunk])
            for i, label in zip(chunk, forward(batch).logits.argmax(-1).tolist()):
                out[i] = self.options.labels.split(",")[label]
        return out

    def metric(self, examples, predictions):
        return Counter(correct=sum(p == label for (label, _), p in zip(examples, predictions)), total=len(examples))

    def scores(self, counts):
        return {"accuracy": counts["correct"] / max(1, counts["total"]), "total": counts["total"]}


class Copy(Task):
    model_class = SujiForUniLM
    best_metric = "exact"
    generates = True

    def read(self, path):
        return read_tsv(path)

    def encode(self, examples):
        rows = []
        for source, target in examples:
            encoded = self.tokenizer(source, target, truncation=True, max_length=self.args.max_seq_length)
            rows.append({"input_ids": encoded["input_ids"], "token_type_ids": encoded["token_type_ids"]})
        return rows

    def collate(self, rows):
        batch = pad_rows(rows, {"input_ids": self.tokenizer.pad_token_id, "token_type_ids": 0})
        batch["labels"] = SujiForUniLM.unilm_labels(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        return batch

    def predict(self, model, examples, forward):
        out = []
        for source, target in examples:
            prompt = self.tokenizer(source, return_tensors="pt")
            device = next(model.parameters()).device
            generated = model.generate(**{k: v.to(device) for k, v in prompt.items()}, max_new_tokens=len(target) + 1,
                                       do_sample=False, eos_token_id=self.tokenizer.sep_token_id,
                                       pad_token_id=self.tokenizer.pad_token_id)
            new = generated[0, prompt["input_ids"].shape[1]:]
            out.append(self.tokenizer.decode(new, skip_special_tokens=True).replace(" ", ""))
        return out

    def metric(self, examples, predictions):
        return Counter(exact=sum(p == target for (_, target), p in zip(examples, predictions)), total=len(examples))

    def scores(self, counts):
        return {"exact": counts["exact"] / max(1, counts["total"])}


if __name__ == "__main__":
    TASKS = {"classify": Classify, "copy": Copy}
    name = next(a for a in sys.argv[1:] if a in TASKS)  # the deepspeed launcher puts --local_rank first
    run(TASKS[name], [a for a in sys.argv[1:] if a != name])
