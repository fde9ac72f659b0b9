"""A tiny model and batch stream for tests that run the training loop inside a real DeepSpeed engine
(imported by the scripts those tests start in a fresh process)."""

import torch
import transformers
from torch import nn


class Out:
    def __init__(self, loss):
        self.loss = loss


class Tiny(transformers.PreTrainedModel):
    """Embedding -> mean -> linear classifier over 12 tokens and 3 classes; saves like any HF model."""

    config_class = transformers.PretrainedConfig

    def __init__(self, config=None):
        super().__init__(config or transformers.PretrainedConfig())
        self.emb = nn.Embedding(12, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, input_ids, labels):
        return Out(nn.functional.cross_entropy(self.out(self.emb(input_ids).mean(1)), labels))


def batches(index, rank, world):
    """Rows of micro-step `index`: a pure function of it, as the loop requires."""
    g = torch.Generator().manual_seed(index)
    return {"input_ids": torch.randint(0, 12, (4, 5), generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}
