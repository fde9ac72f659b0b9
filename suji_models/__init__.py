"""Suji: Chinese language models on PyTorch + DeepSpeed (BERT, RoFormer, ALBERT, GPT2 / CPM-LM).

Importing this package registers the `suji` model type with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration import PRESETS, SujiConfig
from .convert.hf import export_to_transformers
from .modeling import (
    SujiForCausalLM,
    SujiForMaskedLM,
    SujiForSequenceClassification,
    SujiForTokenClassification,
    SujiForUniLM,
    SujiModel,
    SujiPreTrainedModel,
)

AutoConfig.register("suji", SujiConfig, exist_ok=True)
for _auto, _cls in [
    (AutoModel, SujiModel),
    (AutoModelForMaskedLM, SujiForMaskedLM),
    (AutoModelForCausalLM, SujiForCausalLM),
    (AutoModelForSequenceClassification, SujiForSequenceClassification),
    (AutoModelForTokenClassification, SujiForTokenClassification),
]:
    _auto.register(SujiConfig, _cls, exist_ok=True)

__all__ = [
    "PRESETS",
    "SujiConfig",
    "SujiModel",
    "SujiPreTrainedModel",
    "SujiForMaskedLM",
    "SujiForCausalLM",
    "SujiForUniLM",
    "SujiForSequenceClassification",
    "SujiForTokenClassification",
    "export_to_transformers",
]
