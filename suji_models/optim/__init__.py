"""Training tricks from Su Jianlin's blog, reusable by every finetuning recipe and by pretraining.

Optimizers (built by :func:`build_optimizer`):
- `adamw` (torch's), `adax` (:class:`AdaX`), `adafactor` (transformers' `Adafactor`, which follows
  "AdaFactor优化器浅析（附开源实现）": factored second moment, update clipping by RMS, relative step).
- Layer-wise learning-rate decay for any of them (:func:`layerwise_lr_groups`).

Training-step tricks, as small objects the finetune driver calls at fixed points:
- `loss(engine, batch) -> loss` replaces `engine(**batch).loss`: :class:`FGM`, :class:`GradientPenalty`,
  :class:`RDrop` (at most one of them per run).
- `prepare(model, batches)` once before DeepSpeed wraps the model: :class:`ChildTuningD` (Fisher mask).
- `attach(engine)` once after `deepspeed.initialize`: :class:`ChildTuningF` / :class:`ChildTuningD`
  (gradient hooks), :class:`EMA` (shadow weights).
- `after_step(engine)` after every `engine.step()` at an optimizer-step boundary: :class:`EMA`.
- `applied(engine)` context around evaluation and saving the best weights: :class:`EMA`.

Gradient accumulation ("用时间换取效果：Keras梯度累积优化器") is DeepSpeed's own
`gradient_accumulation_steps` (`--gradient_accumulation_steps`), not a wrapper optimizer here.

ZeRO: :func:`check_zero_stage` refuses what cannot work at a stage (each class says why).
AdaFactor is refused under every ZeRO stage: ZeRO flattens each parameter group into one 1-D
partition before the optimizer sees it, and Adafactor's factored moments and per-matrix RMS need each
matrix's 2-D shape (on 1-D tensors it silently becomes an unfactored, differently scaled update).
AdaX is elementwise and works on flat partitions (DeepSpeed needs `zero_allow_untested_optimizer`).
"""

from __future__ import annotations

import torch

from .adax import AdaX
from .adversarial import FGM, GradientPenalty, find_word_embeddings
from .child_tuning import ChildTuningD, ChildTuningF, fisher_information
from .ema import EMA
from .layerwise_lr import layerwise_lr_groups
from .rdrop import RDrop, symmetric_kl

OPTIMIZERS = ("adamw", "adax", "adafactor")


def build_optimizer(model, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.01,
                    layer_decay: float = 1.0, zero_stage: int = 0, fused: bool = False):
    """The optimizer `name` over `model`'s trainable parameters, with layer-wise lr decay when
    `layer_decay` < 1 (weight decay on matrices only either way)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    groups = layerwise_lr_groups(model, lr, layer_decay, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6,
                                 **({"fused": True} if fused else {"foreach": True}))
    if name == "adax":
        return AdaX(groups, lr=lr)
    if zero_stage:
        raise ValueError("adafactor needs each parameter's matrix shape, which ZeRO flattens away; "
                         "train it without ZeRO (zero_stage 0) or choose adamw / adax")
    from transformers.optimization import Adafactor

    # a fixed external learning rate (the schedule is the driver's), no relative step
    return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                     weight_decay=weight_decay)


def check_zero_stage(tricks, zero_stage: int) -> None:
    """Raise if a trick cannot run under this ZeRO stage, naming the trick and the reason."""
    for trick in tricks:
        reason = getattr(trick, "refused_under_zero3", None)
        if zero_stage >= 3 and reason:
            raise ValueError(f"{trick.name} is not supported under ZeRO-3: {reason}; use ZeRO-1 or 2")
    loss_tricks = [t.name for t in tricks if hasattr(t, "loss")]
    if len(loss_tricks) > 1:
        raise ValueError(f"at most one of FGM / gradient penalty / R-Drop per run, got {loss_tricks}")


__all__ = ["AdaX", "EMA", "FGM", "GradientPenalty", "RDrop", "ChildTuningF", "ChildTuningD", "OPTIMIZERS",
           "build_optimizer", "check_zero_stage", "fisher_information", "find_word_embeddings",
           "layerwise_lr_groups", "symmetric_kl"]
