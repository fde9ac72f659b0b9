"""Layer-wise learning-rate decay (ELECTRA, Clark et al. 2020; used across Su's finetuning examples):
the task head trains at the full rate and each layer below at `decay` times the rate of the layer
above it:

    head (and pooler): lr;   layer i of L (0-based): lr * decay^(L - i);   embeddings: lr * decay^(L + 1)

Parameters are found by name: `...layers.<i>.` (Suji) or `...layer.<i>.` (BERT in transformers) and
`embeddings`; ALBERT's shared layer group counts as its deepest use. Weight decay is split as in the
training loop: none on biases and LayerNorm weights.

ZeRO-1/2/3: only parameter groups with their own `lr`; DeepSpeed keeps the groups and the scheduler
scales each group's rate, so it composes with every stage.
"""

from __future__ import annotations

import re

_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def depth_of(name: str, num_layers: int) -> int:
    """0 for embeddings, i + 1 for layer i, num_layers + 1 for everything else (the head)."""
    if "embeddings" in name:
        return 0
    match = _LAYER.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def layerwise_lr_groups(model, lr: float, decay: float, weight_decay: float = 0.0, num_layers: int | None = None):
    """Optimizer parameter groups with per-depth learning rates (`decay` = 1 gives one rate)."""
    if not 0 < decay <= 1:
        raise ValueError(f"layer-wise lr decay must be in (0, 1], got {decay}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if num_layers is None:
        depths = [int(m.group(1)) + 1 for n, _ in trainable if (m := _LAYER.search(n))]
        num_layers = max(depths, default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in trainable:
        depth = depth_of(name, num_layers)
        no_decay = p.ndim < 2 or "norm" in name
        key = (depth, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * decay ** (num_layers + 1 - depth),
                           "weight_decay": 0.0 if no_decay else weight_decay, "depth": depth}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]
