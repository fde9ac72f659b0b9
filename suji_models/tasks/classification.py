"""Text classification: readers for the Chinese sets, single- and multi-label models, and CAN.

- Single-label: softmax + cross-entropy over a linear head on the pooled encoder output.
- Multi-label: the ZLPR loss ("将“softmax+交叉熵”推广到多标签分类问题", kexue.fm/archives/7359) on the same
  head, predicting every class whose score is > 0; with soft targets (probabilities per class) its
  soft-label form ("多标签“Softmax+交叉熵”的软标签版本", kexue.fm/archives/9064). Both losses live in
  `suji_models.losses`.
- CAN ("CAN：借助先验分布提升分类性能的简单后处理技巧", kexue.fm/archives/8728): a post-processing of the
  predicted distributions of the low-confidence examples by alternating normalization against the
  label prior estimated on the training set (:func:`can_adjust`).
Inputs are one text or a pair of texts (encoded as `[CLS] a [SEP] b [SEP]` with segment ids).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ..losses import multilabel_categorical_crossentropy, soft_multilabel_categorical_crossentropy
from ..modeling import SujiModel, SujiPreTrainedModel
from .readers import DataError, iter_json_objects, json_field, split_examples


@dataclass(frozen=True)
class TextExample:
    text: str
    label: object = None  # single-label: a class name; multi-label: a tuple of names or a tuple of (name, p)
    text_b: str | None = None


# --------------------------------------------------------------------------------------------- readers

def _rows(path, skip_header: bool):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for line, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if (skip_header and line == 1) or not row or (len(row) == 1 and not row[0].strip()):
                continue
            yield f"{path}:{line}", row


def read_label_tsv(path) -> list[TextExample]:
    """TSV with a header naming the columns: `label` and `text_a` (ChnSentiCorp, SMP2020-EWECT, the
    UER-py format), optionally `text_b` for pairs."""
    path = Path(path)
    header = Path(path).open(encoding="utf-8-sig").readline().rstrip("\r\n").split("\t") if path.is_file() else []
    if "label" not in header or "text_a" not in header:
        raise DataError(f"{path}:1: the header must name the columns 'label' and 'text_a', got {header}")
    li, ai = header.index("label"), header.index("text_a")
    bi = header.index("text_b") if "text_b" in header else None
    examples = []
    for where, row in _rows(path, skip_header=True):
        if len(row) != len(header):
            raise DataError(f"{where}: expected {len(header)} tab-separated fields {header}, got {len(row)}")
        for name, i in (("label", li), ("text_a", ai)) + ((("text_b", bi),) if bi is not None else ()):
            if not row[i].strip():
                raise DataError(f"{where}: empty field {name!r}")
        examples.append(TextExample(row[ai], row[li], row[bi] if bi is not None else None))
    return examples


def read_columns(path, text_column: int, label_column: int, width: int, label_names=None) -> list[TextExample]:
    """Header-less TSV: the text and label at given columns (THUCNews titles: `title<TAB>id`, CSL
    discipline: `prefix<TAB>title<TAB>category`). `label_names` maps an integer id column to names."""
    examples = []
    for where, row in _rows(path, skip_header=False):
        if len(row) != width:
            raise DataError(f"{where}: expected {width} tab-separated fields, got {len(row)}")
        text, label = row[text_column], row[label_column].strip()
        if not text.strip():
            raise DataError(f"{where}: empty text")
        if label_names is not None:
            if not label.isdigit() or int(label) >= len(label_names):
                raise DataError(f"{where}: field label must be a class id 0..{len(label_names) - 1}, got {label!r}")
            label = label_names[int(label)]
        examples.append(TextExample(text, label))
    return examples


def read_json_labelled(path, text_field: str = "sentence", label_field: str = "label_desc",
                       text_b_field: str | None = None) -> list[TextExample]:
    """JSON lines with a text field and a label field (FewCLUE: `sentence` + `label_desc` (TNEWS) or
    `label_des` (IFLYTEK)). A label that is a list is a multi-label target (class names); a dict
    {name: probability} is a soft multi-label target."""
    examples = []
    for line, obj in iter_json_objects(path, with_lines=True):
        where = f"{path}:{line}"
        text = json_field(obj, text_field, where, str)
        label = json_field(obj, label_field, where, (str, int, list, dict))
        if isinstance(label, list):
            label = tuple(str(x) for x in label)
        elif isinstance(label, dict):
            for name, p in label.items():
                if not isinstance(p, (int, float)) or not 0 <= p <= 1:
                    raise DataError(f"{where}: field {label_field!r}: soft label of {name!r} must be in [0, 1]")
            label = tuple(sorted((str(k), float(v)) for k, v in label.items()))
        else:
            label = str(label)
        text_b = json_field(obj, text_b_field, where, str) if text_b_field else None
        examples.append(TextExample(text, label, text_b))
    return examples


def class_names(path) -> list[str]:
    return [line.strip() for line in Path(path).open(encoding="utf-8") if line.strip()]


# name -> how to read it; "split" means only one split is here and train/dev come from a seeded split
DATASETS = {
    "chnsenticorp": {"files": ("chnsenticorp/train.tsv", "chnsenticorp/dev.tsv", "chnsenticorp/test.tsv"),
                     "read": read_label_tsv},
    "thucnews": {"files": ("thucnews_titles/dev.txt",), "split": True,
                 "read": lambda p: read_columns(p, 0, 1, 2, class_names(Path(p).parent / "class.txt"))},
    "tnews": {"files": ("fewclue/tnews/train_few_all.json", "fewclue/tnews/dev_few_all.json",
                        "fewclue/tnews/test_public.json"),
              "read": lambda p: read_json_labelled(p, "sentence", "label_desc")},
    "iflytek": {"files": ("fewclue/iflytek/train_few_all.json", "fewclue/iflytek/dev_few_all.json",
                          "fewclue/iflytek/test_public.json"),
                "read": lambda p: read_json_labelled(p, "sentence", "label_des")},
    "smp2020_usual": {"files": ("smp2020_ewect/usual/train.tsv", "smp2020_ewect/usual/dev.tsv",
                                "smp2020_ewect/usual/test.tsv"), "read": read_label_tsv},
    "smp2020_virus": {"files": ("smp2020_ewect/virus/train.tsv", "smp2020_ewect/virus/dev.tsv",
                                "smp2020_ewect/virus/test.tsv"), "read": read_label_tsv},
    "csl": {"files": ("csl_ctg/train.tsv", "csl_ctg/dev.tsv", "csl_ctg/test.tsv"),
            "read": lambda p: read_columns(p, 1, 2, 3)},
}


def load_dataset(name: str, data_dir, dev_fraction: float = 0.2, seed: int = 0):
    """(train, dev, test or None, description) of a named set under `data_dir` (the classification
    data folder)."""
    if name not in DATASETS:
        raise ValueError(f"unknown classification dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    paths = [Path(data_dir) / f for f in spec["files"]]
    if spec.get("split"):
        train, dev = split_examples(spec["read"](paths[0]), dev_fraction, seed)
        return train, dev, None, f"{spec['files'][0]} split {1 - dev_fraction:.0%}/{dev_fraction:.0%} with seed {seed}"
    train, dev = spec["read"](paths[0]), spec["read"](paths[1])
    test = spec["read"](paths[2]) if len(paths) > 2 else None
    return train, dev, test, " / ".join(spec["files"])


def is_multi_label(examples) -> bool:
    kinds = {isinstance(ex.label, tuple) for ex in examples}
    if len(kinds) > 1:
        raise DataError("mixed single-label and multi-label examples")
    return kinds == {True}


def label_names_of(*splits) -> list[str]:
    """Sorted class names over the given splits (dev classes absent from train are kept, so that
    their examples count as errors rather than vanish)."""
    names = set()
    for examples in splits:
        for ex in examples or ():
            if isinstance(ex.label, tuple):
                names.update(x[0] if isinstance(x, tuple) else x for x in ex.label)
            elif ex.label is not None:
                names.add(ex.label)
    return sorted(names)


def target_vector(label, index: dict) -> np.ndarray:
    """Single-label -> the class id (as a 0-d array); multi-label -> a [C] 0/1 or soft vector."""
    if not isinstance(label, tuple):
        return np.array(index[label])
    target = np.zeros(len(index), dtype=np.float32)
    for item in label:
        name, p = item if isinstance(item, tuple) else (item, 1.0)
        target[index[name]] = p
    return target


def label_prior(examples, names) -> np.ndarray:
    """The class frequencies of single-label `examples` (CAN's prior), over `names`."""
    index = {n: i for i, n in enumerate(names)}
    counts = np.zeros(len(names))
    for ex in examples:
        counts[index[ex.label]] += 1
    return counts / counts.sum()


# --------------------------------------------------------------------------------------------- model

@dataclass
class ClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def set_classification_config(config, labels, multi_label: bool = False, soft_labels: bool = False,
                              pooling: str = "cls"):
    """Write the classifier's settings into an encoder config (saved with the checkpoint)."""
    if pooling not in ("cls", "mean"):
        raise ValueError(f"classification pooling must be cls or mean, got {pooling!r}")
    if soft_labels and not multi_label:
        raise ValueError("soft labels are a multi-label target (ZLPR's soft form)")
    config.cls_labels, config.cls_multi_label = list(labels), multi_label
    config.cls_soft_labels, config.cls_pooling = soft_labels, pooling
    return config


class SujiForTextClassification(SujiPreTrainedModel):
    """Encoder + dropout + linear head over the pooled output (`cls_pooling` cls: the first token;
    mean: masked mean of the last layer). Single-label: cross-entropy; multi-label
    (`cls_multi_label`): ZLPR, or its soft-label form (`cls_soft_labels`, targets in [0, 1]).
    Class names are `config.cls_labels` (in logit order). The head lives under `classifier.` so
    that loading an encoder checkpoint reports it as a new task head."""

    def __init__(self, config):
        super().__init__(config)
        if not getattr(config, "cls_labels", None):
            raise ValueError("config.cls_labels must name the classes (set_classification_config)")
        self.suji = SujiModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, len(config.cls_labels))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, return_dict=None,
                **kwargs) -> ClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.suji(input_ids, attention_mask, token_type_ids).last_hidden_state
        if self.config.cls_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if not self.config.cls_multi_label:
                loss = F.cross_entropy(logits.float(), labels.long())
            elif self.config.cls_soft_labels:
                loss = soft_multilabel_categorical_crossentropy(labels, logits).mean()
            else:
                loss = multilabel_categorical_crossentropy(labels, logits).mean()
        return ClassifierOutput(loss=loss, logits=logits)


def collate_texts(tokenizer, examples, max_length: int, label_index: dict | None) -> dict:
    """Tokenize texts (or text pairs) into a padded batch; with `label_index`, add `labels`."""
    texts = [ex.text for ex in examples]
    pairs = [ex.text_b for ex in examples]
    if any(b is not None for b in pairs):
        if any(b is None for b in pairs):
            raise DataError("a batch mixes single texts and text pairs")
        enc = tokenizer(texts, pairs, max_length=max_length, truncation="longest_first", padding=True,
                        return_tensors="pt")
    else:
        enc = tokenizer(texts, max_length=max_length, truncation=True, padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "token_type_ids" in enc:
        batch["token_type_ids"] = enc["token_type_ids"]
    if label_index is not None:
        batch["labels"] = torch.as_tensor(np.stack([target_vector(ex.label, label_index) for ex in examples]))
    return batch


# --------------------------------------------------------------------------------------------- CAN

def top_k_entropy(probs: np.ndarray, k: int = 3) -> np.ndarray:
    """CAN's uncertainty of each row: the entropy of its top-k probabilities renormalized, divided by
    log k (so it lies in [0, 1]; 1 = the top k are equally likely)."""
    if not 2 <= k <= probs.shape[1]:
        raise ValueError(f"top-k entropy needs 2 <= k <= number of classes ({probs.shape[1]}), got {k}")
    top = np.sort(probs, axis=1)[:, -k:]
    top = top / top.sum(axis=1, keepdims=True)
    return -(top * np.log(np.clip(top, 1e-30, None))).sum(axis=1) / np.log(k)


def can_adjust(probs, prior, top_k: int = 3, threshold: float = 0.9, alpha: float = 1.0, iters: int = 1):
    """CAN (kexue.fm/archives/8728): re-estimate the distribution of each low-confidence row (top-k
    entropy >= `threshold`) together with all high-confidence rows by alternating normalization:

        repeat `iters` times:  Y <- Y^alpha;  Y <- Y / column sums;  Y <- Y * prior;  Y <- Y / row sums

    where Y stacks the confident rows and the one row being adjusted (each low-confidence row is
    adjusted on its own, as in the post). Returns (adjusted probabilities, low-confidence mask);
    the confident rows are returned unchanged. With no confident row at all (an untrained model)
    nothing is adjusted: the procedure would replace every prediction by the prior."""
    probs = np.asarray(probs, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    top_k = min(top_k, probs.shape[1])  # two-class tasks: the entropy of both
    if prior.shape != (probs.shape[1],):
        raise ValueError(f"prior has shape {prior.shape}, expected ({probs.shape[1]},)")
    unconfident = top_k_entropy(probs, top_k) >= threshold
    confident = probs[~unconfident]
    if not len(confident):
        # nothing to align against: every row would come out as the prior itself (column sums of a
        # single row are the row), i.e. the model ignored; leave the predictions as they are
        return probs.copy(), unconfident
    adjusted = probs.copy()
    for i in np.flatnonzero(unconfident):
        Y = np.concatenate([confident, probs[i][None]], axis=0)
        for _ in range(iters):
            Y = Y ** alpha
            Y = Y / Y.sum(axis=0, keepdims=True)
            Y = Y * prior[None]
            Y = Y / Y.sum(axis=1, keepdims=True)
        adjusted[i] = Y[-1]
    return adjusted, unconfident


def can_report(probs, gold, prior, top_k: int = 3, threshold: float = 0.9, alpha: float = 1.0, iters: int = 1) -> dict:
    """Accuracy before and after CAN, and on the confident / low-confidence parts (in %)."""
    gold = np.asarray(gold)
    top_k = min(top_k, np.asarray(probs).shape[1])
    adjusted, unconfident = can_adjust(probs, prior, top_k, threshold, alpha, iters)
    before = np.asarray(probs).argmax(1) == gold
    after = adjusted.argmax(1) == gold

    def pct(x):
        return float(100 * x.mean()) if len(x) else 0.0

    return {"accuracy": pct(before), "accuracy_can": pct(after), "low_confidence": int(unconfident.sum()),
            "accuracy_confident": pct(before[~unconfident]), "accuracy_low_confidence": pct(before[unconfident]),
            "accuracy_low_confidence_can": pct(after[unconfident]), "can_top_k": top_k,
            "can_threshold": threshold, "can_alpha": alpha, "can_iters": iters}


def save_labels(folder, names, multi_label: bool, soft_labels: bool, prior=None) -> Path:
    path = Path(folder) / "labels.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"labels": list(names), "multi_label": multi_label, "soft_labels": soft_labels,
              "prior": None if prior is None else [float(p) for p in prior]}
    path.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def load_labels(folder) -> dict:
    path = Path(folder) / "labels.json"
    if not path.is_file():
        raise DataError(f"{path}: no such file (a classification checkpoint keeps its class names there)")
    return json.loads(path.read_text(encoding="utf-8"))
