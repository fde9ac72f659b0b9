"""Numeric guards of the training loop: a step with a non-finite loss is skipped and counted (K in a row
stop the run with a diagnostic), and under fp16 a warning when the dynamic loss scale reaches its floor."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import UserError


def _parameters_with_grad(engine):
    return [p for p in engine.module.parameters() if p.grad is not None]


class NumericGuard:
    """A step whose loss is NaN or inf on any rank (a flag all-reduced, so every rank decides alike)
    updates nothing: without ZeRO the gradients are zeroed (so clipping sees finite numbers) and the
    optimizer's own `step` is a no-op during that `engine.step()`, so weights, moments and step count
    stay as they were while DeepSpeed's counters and the learning-rate schedule advance; under ZeRO,
    DeepSpeed's own check of the gradient norm (ZeRO-1/2/3, also in fp32) skips the update and the
    schedule and clears the gradients, which is verified with `engine.was_step_applied()`. `max_bad`
    such steps in a row end the run with a UserError naming step, loss, gradient norm and learning
    rate; the checkpoints already written are left as they are."""

    def __init__(self, max_bad: int, rank: int):
        self.max_bad, self.rank = max_bad, rank
        self.in_row = self.skipped = 0
        self.bad = False
        self.grad_norm = self.engine = None

    def before_step(self, engine, finite: bool) -> None:
        self.engine = engine
        flag = torch.tensor([0.0 if finite else 1.0], device=engine.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.bad = bool(flag.item())
        if not self.bad:
            return
        self.grad_norm = None
        params = _parameters_with_grad(engine)
        if params:  # plain (non-ZeRO) engine: the gradients are still on the parameters
            self.grad_norm = float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad.detach().float()) for p in params])))
        if not engine.zero_optimization():
            for p in params:
                p.grad.zero_()

    @contextlib.contextmanager
    def stepping(self, engine):
        """Around `engine.step()`: on a bad step without ZeRO the wrapped optimizer does nothing."""
        if not (self.bad and not engine.zero_optimization()):
            yield
            return
        optimizer = engine.optimizer
        optimizer.step = lambda *args, **kwargs: None  # an instance attribute hides the method
        try:
            yield
        finally:
            del optimizer.step

    def after(self, step: int, loss: float, lr: float, output_dir: Path) -> None:
        if not self.bad:
            self.in_row = 0
            return
        self.bad = False
        self.skipped += 1
        self.in_row += 1
        engine = self.engine
        if engine is not None and engine.zero_optimization() and engine.was_step_applied():
            raise RuntimeError(f"step {step}: non-finite loss but DeepSpeed applied the update")
        if self.grad_norm is None and engine is not None:
            norm = engine.get_global_grad_norm()
            self.grad_norm = None if norm is None else float(norm)
        norm = "n/a" if self.grad_norm is None else f"{self.grad_norm:.4g}"
        if self.rank == 0:
            print(f"step {step}: non-finite loss {loss} (grad norm {norm}); step skipped, "
                  f"{self.in_row} in a row", flush=True)
        if self.max_bad and self.in_row >= self.max_bad:
            from .checkpoint import complete_checkpoints

            kept = complete_checkpoints(output_dir)
            raise UserError(f"{self.in_row} steps in a row with a non-finite loss (--max_bad_steps {self.max_bad}): "
                            f"step {step}, loss {loss}, grad norm {norm}, learning rate {lr:.4g}; "
                            + (f"{kept[-1].name} is the last good checkpoint" if kept else "no checkpoint was saved")
                            + " (lower --learning_rate, check the data of these steps, or raise --max_bad_steps)")


def loss_scale_and_floor(optimizer) -> tuple[float | None, float | None]:
    """(current fp16 loss scale, its floor) of a DeepSpeed optimizer; None for what it does not have
    (bf16 / fp32: no scaling; a static scale: no floor). Where DeepSpeed keeps them:

    - no ZeRO (`FP16_Optimizer`, `FP16_UnfusedOptimizer`): a `LossScaleConfig` in `loss_scale_config`
      (`cur_scale`, `min_loss_scale` when `dynamic_loss_scale`; `use_grad_scaling` False for bf16 / fp32);
    - ZeRO 1/2 (`DeepSpeedZeroOptimizer`) and 3 (`DeepSpeedZeroOptimizer_Stage3`): a `DynamicLossScaler`
      (`cur_scale`, `min_scale`, `dynamic`) or a static `LossScaler` in `loss_scaler`;
    - a scale set from outside (`custom_loss_scaler`) wins in both, as their `loss_scale` property says.
    The floor is the config's `fp16.min_loss_scale` (default 1). A bare `LossScaleConfig` or loss scaler
    is accepted too."""
    config = getattr(optimizer, "loss_scale_config", None)
    if config is None and hasattr(optimizer, "use_grad_scaling"):
        config = optimizer
    if config is not None:
        if not config.use_grad_scaling:
            return None, None
        scale, floor = config.cur_scale, (config.min_loss_scale if config.dynamic_loss_scale else None)
    else:
        scaler = getattr(optimizer, "loss_scaler", None) or (optimizer if hasattr(optimizer, "cur_scale") else None)
        if scaler is None:
            return None, None
        scale, floor = scaler.cur_scale, (getattr(scaler, "min_scale", None) if getattr(scaler, "dynamic", False)
                                          else None)
    if getattr(optimizer, "custom_loss_scaler", False):
        scale, floor = optimizer.external_loss_scale, None
    return (None if scale is None else float(scale)), (None if floor is None else float(floor))


class LossScaleFloor:
    """fp16: a warning on rank 0 when the dynamic loss scale reaches its floor: gradients overflow even at
    the smallest scale, so steps are skipped (under ZeRO DeepSpeed raises when it overflows there again).
    Printed once, and again only after the scale has risen above the floor and fallen back."""

    def __init__(self, rank: int):
        self.rank, self.at_floor = rank, False

    def check(self, step: int, optimizer) -> str | None:
        scale, floor = loss_scale_and_floor(optimizer)
        at_floor = scale is not None and floor is not None and scale <= floor
        message = None
        if at_floor and not self.at_floor:
            message = (f"warning: step {step}: the fp16 loss scale reached its floor ({scale:g}, DeepSpeed's "
                       "fp16.min_loss_scale): the gradients overflow even at the smallest scale, so steps are skipped "
                       "(under ZeRO DeepSpeed stops the run if it overflows there again); lower --learning_rate, check "
                       "the data, or train in bf16")
            if self.rank == 0:
                print(message, flush=True)
        self.at_floor = at_floor
        return message
