"""Exponential moving average of the weights (bert4keras' `extend_with_exponential_moving_average`):
after every optimizer step

    shadow <- decay * shadow + (1 - decay) * theta

and evaluation / saving use the shadow weights, swapped in for the duration and swapped back after,
so training continues from the raw weights.

ZeRO: stages 1-2 keep every parameter whole on every rank after the step, so the shadow is a plain
copy of the module's parameters (kept in fp32 whatever the training precision). Under ZeRO-3 each
rank holds only a slice of each parameter (`param.data` is empty outside a gather): refused.
"""

from __future__ import annotations

import contextlib

import torch


class EMA:
    name = "ema"
    refused_under_zero3 = "ZeRO-3 partitions the parameters: the module holds no full weights to average"

    def __init__(self, decay: float = 0.999):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] | None = None

    def _params(self, module):
        return [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    def attach(self, engine) -> None:
        """Start the average at the current weights (call once, after the engine is built)."""
        module = getattr(engine, "module", engine)
        self.shadow = {n: p.detach().float().clone() for n, p in self._params(module)}

    @torch.no_grad()
    def after_step(self, engine) -> None:
        """Call after every `engine.step()`: the average moves only when the optimizer really stepped
        (the engine's `global_steps` changed; under gradient accumulation most micro-steps do not)."""
        module = getattr(engine, "module", engine)
        step = getattr(engine, "global_steps", None)
        if step is not None:
            if step == getattr(self, "_last_step", None):
                return
            self._last_step = step
        if self.shadow is None:
            self.attach(engine)
            return
        for n, p in self._params(module):
            self.shadow[n].mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)

    def state_dict(self) -> dict:
        """The shadow weights, to save beside a checkpoint (a resumed run continues the average)."""
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.shadow = state["decay"], state["shadow"]

    @contextlib.contextmanager
    def applied(self, engine):
        """Within the block the module carries the averaged weights; the raw ones come back after."""
        module = getattr(engine, "module", engine)
        if self.shadow is None:
            yield
            return
        saved = {}
        with torch.no_grad():
            for n, p in self._params(module):
                saved[n] = p.detach().clone()
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self._params(module):
                    p.copy_(saved[n])
