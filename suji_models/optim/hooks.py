"""The tricks as options of a finetuning recipe, turned into the training loop's `StepHooks`.

A recipe's options dataclass inherits :class:`TrickOptions`; its task's `step_hooks(args)` returns
:func:`step_hooks` (None when no trick is switched on, so the plain step runs unchanged).

EMA (--ema DECAY) moves its average after every optimizer step (`after_step`), evaluation and the
saved best / final model use the averaged weights (`weights`), and its shadow weights go into every
resumable checkpoint (`state`), so a resumed run continues the same average.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..training.options import option
from . import EMA, OPTIMIZERS, FGM, ChildTuningD, ChildTuningF, GradientPenalty, RDrop, build_optimizer, check_zero_stage


@dataclass
class TrickOptions:
    optimizer: Literal[OPTIMIZERS] = option("adamw", "adamw | adax | adafactor (no ZeRO)")
    layer_decay: float = option(1.0, "layer-wise learning-rate decay per layer below the head (1: off)")
    loss_trick: Literal["none", "fgm", "gradient_penalty", "rdrop"] = option(
        "none", "FGM on the embeddings, the input-gradient penalty, or R-Drop")
    trick_epsilon: float = option(0.0, "FGM's epsilon (default 0.5) or the gradient penalty's (default 1.0)")
    rdrop_alpha: float = option(4.0, "R-Drop's weight alpha of the symmetric KL")
    child_tuning: Literal["none", "f", "d"] = option("none", "ChildTuning-F (random gradient mask each step) "
                                                             "or -D (fixed mask from the Fisher information)")
    child_tuning_reserve: float = option(0.3, "ChildTuning: the fraction of gradients kept")
    child_tuning_batches: int = option(16, "ChildTuning-D: training batches the Fisher information sums over")
    ema: float = option(0.0, "exponential moving average of the weights with this decay (e.g. 0.999; 0: off): "
                             "evaluation and the saved model use the averaged weights (not under ZeRO-3)")


def zero_stage_of(args) -> int:
    stage = 0
    if args.deepspeed_config:
        stage = json.loads(Path(args.deepspeed_config).read_text()).get("zero_optimization", {}).get("stage", 0)
    return args.zero_stage if args.zero_stage is not None else stage


def step_hooks(options: TrickOptions, args, batch_at=None, num_batches=None):
    """StepHooks for the switched-on tricks (None when none is). `batch_at(i)` is the i-th training
    batch: ChildTuning-D sums its Fisher information over the first --child_tuning_batches of them
    (at most `num_batches`, when the data has an end)."""
    from ..training.loop import StepHooks

    stage = zero_stage_of(args)
    tricks = []
    if options.loss_trick == "fgm":
        tricks.append(FGM(options.trick_epsilon or 0.5))
    elif options.loss_trick == "gradient_penalty":
        tricks.append(GradientPenalty(options.trick_epsilon or 1.0))
    elif options.loss_trick == "rdrop":
        tricks.append(RDrop(options.rdrop_alpha))
    child = None
    if options.child_tuning == "f":
        child = ChildTuningF(options.child_tuning_reserve, seed=args.seed)
    elif options.child_tuning == "d":
        child = ChildTuningD(options.child_tuning_reserve)
    if child is not None:
        tricks.append(child)
    ema = EMA(options.ema) if options.ema else None
    if ema is not None:
        tricks.append(ema)
    check_zero_stage(tricks, stage)
    if options.optimizer == "adafactor" and stage:
        raise ValueError("adafactor needs each parameter's matrix shape, which ZeRO flattens away; "
                         "use ZeRO stage 0 or choose adamw / adax")
    if not tricks and options.optimizer == "adamw" and options.layer_decay == 1.0:
        return None
    loss_trick = next((t for t in tricks if hasattr(t, "loss")), None)
    attached = []
    count = options.child_tuning_batches if num_batches is None else min(options.child_tuning_batches, num_batches)

    def forward_backward(engine, batch):
        if child is not None and not attached:  # gradient hooks go on before the first backward
            if isinstance(child, ChildTuningD):
                child.prepare(engine.module, _first_batches(batch_at, count, engine.device))
            child.attach(engine)
            attached.append(child)
        loss = loss_trick.loss(engine, batch) if loss_trick is not None else engine(**batch).loss
        engine.backward(loss)
        return loss

    def optimizer(model, train_args):
        return build_optimizer(model, options.optimizer, train_args.learning_rate, train_args.weight_decay,
                               options.layer_decay, stage, fused=getattr(train_args, "fused_adamw", False))

    # the loop's own AdamW is the same update: leaving it in place lets --head_learning_rate compose with the tricks
    own_optimizer = options.optimizer != "adamw" or options.layer_decay != 1.0
    return StepHooks(forward_backward=forward_backward, optimizer=optimizer if own_optimizer else None,
                     after_step=ema.after_step if ema else None, weights=ema.applied if ema else None, state=ema)


def _first_batches(batch_at, count: int, device):
    for i in range(count):
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch_at(i).items()}
