"""Precision / recall / F1 from counts. Counts (not scores) are what a recipe's metric returns,
because counts add up across ranks and batches and scores do not."""

from __future__ import annotations

from collections import Counter


def prf(tp: int, gold: int, pred: int) -> dict:
    p = tp / pred if pred else 0.0
    r = tp / gold if gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp, "gold": gold,
            "pred": pred}


def set_counts(gold, pred, kind_of=None, prefix: str = "") -> Counter:
    """tp / gold / pred counts of aligned lists of item collections (exact matches of hashable items),
    overall under key (prefix, 'tp'|'gold'|'pred') and, with `kind_of(item)`, per kind."""
    counts = Counter()
    for g, p in zip(gold, pred, strict=True):
        g, p = set(map(_hashable, g)), set(map(_hashable, p))
        for key, items in (("gold", g), ("pred", p), ("tp", g & p)):
            counts[prefix, key] += len(items)
            if kind_of is not None:
                for item in items:
                    counts[kind_of(item), key] += 1
    return counts


def _hashable(item):
    return tuple(_hashable(x) for x in item) if isinstance(item, (list, tuple)) else item


def scores_from_counts(counts, overall: str = "") -> dict:
    """{'precision', 'recall', 'f1', 'tp', 'gold', 'pred', 'per_type': {kind: {...}}} (micro) from
    counts keyed (kind, 'tp'|'gold'|'pred'); `overall` is the kind that holds the totals."""
    result = prf(counts[overall, "tp"], counts[overall, "gold"], counts[overall, "pred"])
    kinds = sorted({k for k, _ in counts if k != overall and isinstance(k, str)})
    result["per_type"] = {k: prf(counts[k, "tp"], counts[k, "gold"], counts[k, "pred"]) for k in kinds}
    return result
