"""AdaX ("AdaX优化器浅析", kexue.fm/archives/7387; Li et al. 2020, "AdaX: Adaptive Gradient Descent with
Exponential Long Term Memory").

Adam's second moment forgets: v_t = beta2 v + (1 - beta2) g^2 weighs old gradients down
exponentially, which the AdaX paper blames for Adam's instability late in training. AdaX lets the
second moment *grow* instead, with a small beta2 (1e-4):

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    v_t = (1 + beta2) v_{t-1} + beta2 g_t^2
    v^_t = v_t / ((1 + beta2)^t - 1)               (so that v^_t is an average of the g^2)
    theta_t = theta_{t-1} - lr m_t / (sqrt(v^_t) + eps)

written as in the post's implementation, with the correction folded into the step size:
lr_t = lr sqrt((1 + beta2)^t - 1), theta_t = theta_{t-1} - lr_t m_t / (sqrt(v_t) + eps).
There is no bias correction of m (the post notes it is not needed). `weight_decay` is decoupled
(AdamW-style: theta <- theta - lr wd theta before the update), the "AdaX-W" form.
"""

from __future__ import annotations

import math

import torch


class AdaX(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 1e-4), eps: float = 1e-6, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"AdaX: lr, eps and weight_decay must be >= 0 (got {lr}, {eps}, {weight_decay})")
        if not 0 <= betas[0] < 1 or not betas[1] > 0:
            raise ValueError(f"AdaX: need 0 <= beta1 < 1 and beta2 > 0, got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdaX does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                grad = p.grad
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(1 + beta2).addcmul_(grad, grad, value=beta2)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                # (1 + beta2)^t - 1 computed as expm1(t log1p(beta2)): exact for tiny beta2 and small t
                step_size = group["lr"] * math.sqrt(math.expm1(t * math.log1p(beta2)))
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)
        return loss
