"""Batches for prediction: rows grouped by length (little padding), padded by the shared function
(`suji_models.training.data.pad_rows`, the same one pretraining uses)."""

from __future__ import annotations

from ..training.data import pad_rows, pad_to_longest

__all__ = ["length_batches", "pad_rows", "pad_to_longest"]


def length_batches(lengths, batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (shortest first); every index once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
