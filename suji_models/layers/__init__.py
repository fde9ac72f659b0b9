"""Task heads shared by the finetuning recipes (they take encoder states, not tokenizers)."""

from .crf import CRF
from .global_pointer import INVALID_SCORE, EfficientGlobalPointer, GlobalPointer, decode_spans, span_mask
from .gplinker import GPLinkerHead

__all__ = ["CRF", "GlobalPointer", "EfficientGlobalPointer", "decode_spans", "span_mask", "INVALID_SCORE", "GPLinkerHead"]
