"""Sentence embeddings and sentence-pair similarity: pair readers, pooling, the Spearman metric, the
CoSENT / Sentence-BERT training model and an `encode(texts)` API.

Methods, from Su Jianlin's posts:
- CoSENT ("CoSENT（一）：比Sentence-BERT更有效的句向量方案", kexue.fm/archives/8847): train the cosine of
  the two sentence vectors directly with a ranking loss (`suji_models.losses.cosent_loss`), so training
  and prediction use the same quantity.
- Sentence-BERT baseline (the same post's comparison): a softmax classifier over (u, v, |u - v|) on
  the two sentence vectors; prediction still scores a pair by cos(u, v).
- Pooling ("你可能不需要BERT-flow：一个线性变换媲美BERT-flow", kexue.fm/archives/8069): `cls` (the first
  token of the last layer), `mean` (masked mean of the last layer), `first-last-avg` (masked mean of the
  average of the first Transformer layer's and the last layer's outputs, as in that post's code: the
  first *layer* output, not the embedding output).
- Evaluation as in both posts: Spearman correlation between cos(u, v) and the gold label.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ..losses import cosent_loss
from ..modeling import SujiModel, SujiPreTrainedModel
from .readers import DataError, split_examples

POOLINGS = ("cls", "mean", "first-last-avg")
OBJECTIVES = ("cosent", "sbert")


@dataclass(frozen=True)
class SentencePair:
    text_a: str
    text_b: str
    label: float  # 0/1 for matching sets, 0-5 for STS-B; only the order matters to CoSENT and Spearman


# --------------------------------------------------------------------------------------------- readers

def read_pairs(path, fmt: str = "tsv") -> list[SentencePair]:
    """Pairs from a tab-separated file. `fmt`:
    - `tsv`: `s1<TAB>s2<TAB>label` (LCQMC, AFQMC, Chinese-STS-B, the CSTS copies of NLI sets);
    - `atec`: `id<TAB>s1<TAB>s2<TAB>label` (ATEC);
    - `pawsx`: a header `id sentence1 sentence2 label`, then rows in that order (PAWS-X).
    A row with the wrong number of fields, an empty sentence or a non-numeric label raises a
    DataError naming file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    columns = {"tsv": (0, 1, 2, 3), "atec": (1, 2, 3, 4), "pawsx": (1, 2, 3, 4)}
    if fmt not in columns:
        raise ValueError(f"unknown pair format {fmt!r}; known: {', '.join(columns)}")
    a, b, y, width = columns[fmt]
    pairs = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line, row in enumerate(rows, 1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if fmt == "pawsx" and line == 1 and row[:2] == ["id", "sentence1"]:
                continue  # header
            where = f"{path}:{line}"
            if len(row) != width:
                raise DataError(f"{where}: expected {width} tab-separated fields ({fmt}), got {len(row)}")
            for field, i in (("sentence 1", a), ("sentence 2", b)):
                if not row[i].strip():
                    raise DataError(f"{where}: empty {field}")
            try:
                label = float(row[y])
            except ValueError:
                raise DataError(f"{where}: field label must be a number, got {row[y]!r}") from None
            pairs.append(SentencePair(row[a], row[b], label))
    return pairs


# name -> (files relative to the similarity data folder, format); one file means "split it with a seed"
DATASETS = {
    "lcqmc": (("LCQMC/dev.txt",), "tsv"),
    "stsb": (("Chinese-STS-B/sts-b-train.txt", "Chinese-STS-B/sts-b-dev.txt"), "tsv"),
    "afqmc": (("AFQMC/train.txt", "AFQMC/dev.txt"), "tsv"),
    "atec": (("ATEC/atec_nlp_sim_train.csv",), "atec"),
    "pawsx": (("PAWS-X/dev_2k.tsv",), "pawsx"),
}


def load_dataset(name: str, data_dir, dev_fraction: float = 0.2, seed: int = 0):
    """(train, dev, description) of a named set under `data_dir` (the similarity data folder). Sets
    with only one split here (LCQMC dev, ATEC, PAWS-X dev) are split by a seeded shuffle."""
    if name not in DATASETS:
        raise ValueError(f"unknown similarity dataset {name!r}; known: {', '.join(DATASETS)}")
    files, fmt = DATASETS[name]
    paths = [Path(data_dir) / f for f in files]
    if len(paths) == 2:
        return read_pairs(paths[0], fmt), read_pairs(paths[1], fmt), f"{files[0]} / {files[1]}"
    train, dev = split_examples(read_pairs(paths[0], fmt), dev_fraction, seed)
    return train, dev, f"{files[0]} split {1 - dev_fraction:.0%}/{dev_fraction:.0%} with seed {seed}"


# --------------------------------------------------------------------------------------------- metric

def rank_with_ties(x) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson correlation of the tie-averaged ranks (0 when either
    side is constant)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} scores but {len(y)} labels")
    rx, ry = rank_with_ties(x), rank_with_ties(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else 0.0


# --------------------------------------------------------------------------------------------- pooling

def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def pool(hidden_states, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per row from the encoder's `hidden_states` (embeddings output, then one per layer,
    as transformers returns them with output_hidden_states=True)."""
    if pooling == "cls":
        return hidden_states[-1][:, 0]
    if pooling == "mean":
        return masked_mean(hidden_states[-1], attention_mask)
    if pooling == "first-last-avg":
        if len(hidden_states) < 3:
            raise ValueError("first-last-avg needs at least two layers")
        return masked_mean((hidden_states[1] + hidden_states[-1]) / 2, attention_mask)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def sentence_vectors(encoder, input_ids, attention_mask, pooling: str, token_type_ids=None) -> torch.Tensor:
    out = encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                  output_hidden_states=True)
    return pool(out.hidden_states, attention_mask, pooling)


# --------------------------------------------------------------------------------------------- model

@dataclass
class PairOutput(ModelOutput):
    loss: torch.Tensor | None = None
    cosines: torch.Tensor | None = None  # [B] for pairs
    vectors: torch.Tensor | None = None  # [N, H] with encode_only


def set_sentence_config(config, pooling: str = "first-last-avg", objective: str = "cosent", num_classes: int = 2,
                        cosent_scale: float = 20.0):
    """Write the sentence-embedding settings into an encoder config (saved with the checkpoint)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    config.sentence_pooling, config.sentence_objective = pooling, objective
    config.sentence_classes, config.cosent_scale = num_classes, cosent_scale
    return config


class SujiForSentenceEmbedding(SujiPreTrainedModel):
    """A Suji encoder + pooling, trained on sentence pairs. Settings in the config
    (:func:`set_sentence_config`): `sentence_pooling`, `sentence_objective`, `sentence_classes`,
    `cosent_scale`.

    Batches hold the 2B sentences of B pairs in one padded tensor: rows 0..B-1 are the first
    sentences, rows B..2B-1 the second ones (one forward pass for both). Objectives:
    - `cosent`: the CoSENT loss on cos(u, v) (labels: any ordered scores);
    - `sbert`: cross-entropy of Linear([u, v, |u - v|]) over `sentence_classes` integer labels (the
      head lives under `classifier.`, reported as a new task head when loading an encoder).
    Either way a pair is scored by `cosines`. With `encode_only`, the output holds the pooled
    `vectors` of all rows (`pooling` overrides the configured one)."""

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "sentence_pooling", None) is None:
            set_sentence_config(config)
        self.suji = SujiModel(config, add_pooling_layer=False)
        self.classifier = (nn.Linear(3 * config.hidden_size, config.sentence_classes)
                           if config.sentence_objective == "sbert" else None)
        self.post_init()

    def embed(self, input_ids, attention_mask, token_type_ids=None, pooling=None) -> torch.Tensor:
        return sentence_vectors(self.suji, input_ids, attention_mask, pooling or self.config.sentence_pooling,
                                token_type_ids)

    def forward(self, input_ids=None, attention_mask=None, labels=None, token_type_ids=None, pooling=None,
                encode_only: bool = False, return_dict=None, **kwargs) -> PairOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        vectors = self.embed(input_ids, attention_mask, token_type_ids, pooling)
        if encode_only:
            return PairOutput(vectors=vectors)
        if vectors.shape[0] % 2:
            raise ValueError(f"a pair batch needs an even number of rows (first sentences, then second ones), "
                             f"got {vectors.shape[0]}")
        u, v = vectors.chunk(2, dim=0)
        cosines = F.cosine_similarity(u.float(), v.float(), dim=-1)
        loss = None
        if labels is not None:
            if self.config.sentence_objective == "cosent":
                loss = cosent_loss(cosines, labels, self.config.cosent_scale)
            else:
                features = torch.cat([u, v, (u - v).abs()], dim=-1)
                loss = F.cross_entropy(self.classifier(features).float(), labels.long())
        return PairOutput(loss=loss, cosines=cosines, vectors=vectors)


def sbert_classes(pairs) -> int:
    """Number of classes of the Sentence-BERT head: labels must be the integers 0..n-1."""
    labels = {p.label for p in pairs}
    if any(label != int(label) or label < 0 for label in labels):
        raise ValueError("the sbert objective needs integer labels 0..n-1 (use cosent for real-valued scores)")
    return int(max(labels)) + 1


def collate_pairs(tokenizer, pairs, max_length: int) -> dict:
    """Tokenize B pairs into one [2B, L] batch (first sentences, then second sentences) + labels."""
    texts = [p.text_a for p in pairs] + [p.text_b for p in pairs]
    enc = tokenizer(texts, max_length=max_length, truncation=True, padding=True, return_tensors="pt",
                    return_token_type_ids=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([p.label for p in pairs], dtype=torch.float32)}


# --------------------------------------------------------------------------------------------- encode API

@torch.no_grad()
def encode(encoder, tokenizer, texts, pooling: str = "first-last-avg", max_length: int = 64,
           batch_size: int = 64, whitening=None, normalize: bool = False) -> np.ndarray:
    """Sentence vectors of `texts` as a float32 array [N, H] (or [N, k] after a whitening with a
    dimension cut). Texts are batched by length (less padding) and returned in the input order."""
    texts = list(texts)
    encoder = getattr(encoder, "suji", encoder)  # a task model or an MLM: its encoder
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in chunk], max_length=max_length, truncation=True, padding=True,
                        return_tensors="pt", return_token_type_ids=False)
        vectors = sentence_vectors(encoder, enc["input_ids"].to(device), enc["attention_mask"].to(device), pooling)
        for i, vector in zip(chunk, vectors.float().cpu().numpy()):
            out[i] = vector
    encoder.train(was_training)
    hidden = getattr(encoder.config, "hidden_size", 0)
    vectors = np.stack(out).astype(np.float32) if out else np.zeros((0, hidden), np.float32)
    if whitening is not None:
        vectors = whitening.apply(vectors)
    if normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [N, d] arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def evaluate_pairs(encoder, tokenizer, pairs, pooling: str, max_length: int = 64, batch_size: int = 64,
                   whitening=None) -> dict:
    """Spearman (x100) of cos(u, v) against the labels, encoding each distinct sentence once."""
    texts = sorted({p.text_a for p in pairs} | {p.text_b for p in pairs})
    index = {t: i for i, t in enumerate(texts)}
    vectors = encode(encoder, tokenizer, texts, pooling, max_length, batch_size, whitening)
    scores = cosine_rows(vectors[[index[p.text_a] for p in pairs]], vectors[[index[p.text_b] for p in pairs]])
    return {"spearman": 100 * spearman(scores, [p.label for p in pairs]), "pairs": len(pairs),
            "scores": scores}


class SentenceEmbedder:
    """The user-facing API: a trained (or plain pretrained) encoder, its tokenizer, the pooling and an
    optional whitening, saved together in one folder.

        embedder = SentenceEmbedder.from_pretrained("runs/sim/best")
        vectors = embedder.encode(["今天天气不错", "今天天气很好"])   # [2, H] float32
        embedder.similarity(["今天天气不错"], ["今天天气很好"])        # cosines
    """

    SETTINGS = "sentence_embedding.json"

    def __init__(self, encoder, tokenizer, pooling: str = "first-last-avg", max_length: int = 64, whitening=None):
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.encoder, self.tokenizer, self.pooling, self.max_length = encoder, tokenizer, pooling, max_length
        self.whitening = whitening

    def encode(self, texts, batch_size: int = 64, normalize: bool = False) -> np.ndarray:
        return encode(self.encoder, self.tokenizer, texts, self.pooling, self.max_length, batch_size,
                      self.whitening, normalize)

    def similarity(self, texts_a, texts_b, batch_size: int = 64) -> np.ndarray:
        return cosine_rows(self.encode(texts_a, batch_size), self.encode(texts_b, batch_size))

    def save_pretrained(self, folder) -> Path:
        import json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        settings = {"pooling": self.pooling, "max_length": self.max_length, "whitening": None}
        if self.whitening is not None:
            settings["whitening"] = self.whitening.save(folder / "whitening.npz").name
        (folder / self.SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(cls, folder, pooling: str | None = None, tokenizer=None, **kwargs):
        """Load an encoder folder (a Suji checkpoint, or a transformers one converted on load) with
        its tokenizer; the pooling and whitening saved beside it are used unless given."""
        import json

        from transformers import AutoTokenizer

        from .whitening import Whitening

        folder = Path(folder)
        settings_file = folder / cls.SETTINGS
        settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
        encoder = SujiModel.from_pretrained(folder, add_pooling_layer=False, strict_weights=False, **kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(folder)
        whitening = Whitening.load(folder / settings["whitening"]) if settings.get("whitening") else None
        pooling = pooling or settings.get("pooling") or getattr(encoder.config, "sentence_pooling", None)
        return cls(encoder, tokenizer, pooling or "first-last-avg",
                   settings.get("max_length", 64), whitening)
