"""Adversarial training on the embeddings (FGM) and the gradient penalty, as training-loss objects.

Both perturb the output of the word-embedding lookup e = W[ids], as bert4keras does on its
'Embedding-Token' layer ("对抗训练浅谈：意义、方法和思考（附Keras实现）", kexue.fm/archives/7234):

- FGM: r = eps * g / ||g||, g = dL/dW the gradient of the loss w.r.t. the embedding *matrix* (its rows
  gathered back from dL/de), and the training loss becomes L(x) + L(x + r) with r held constant.
  bert4keras does this as two backward passes with the matrix perturbed in between; here the gradient
  w.r.t. e is taken with `torch.autograd.grad` (no parameter gradient is touched) and the engine gets
  one loss L + L_adv for one backward: the same parameter gradients, and DeepSpeed ZeRO-1/2 see a
  single backward per micro-step (they reduce gradients in backward hooks and do not allow a second
  backward before the step).
- Gradient penalty: L + eps/2 * ||dL/de||^2, the squared gradient w.r.t. every embedding lookup
  (bert4keras sums the squares of the gathered rows, `K.gradients(loss, embeddings)[0].values`),
  differentiated through (`create_graph=True`: a double backward).
  "输入梯度惩罚与参数梯度惩罚的一个不等式" (kexue.fm/archives/8796) relates it to the penalty on the
  parameter gradient: for a layer z = W x + b, dL/dx = W^T dL/dz and dL/dW = dL/dz x^T, hence
  ||dL/dx|| <= ||W|| ||dL/dz|| = (||W|| / ||x||) ||dL/dW||_F: penalizing parameter gradients (which SGD
  does implicitly) also bounds the input-gradient penalty, so the two regularize alike.

Both run the model as the plain module (`engine.module`), not through the engine's forward: DeepSpeed
marks the engine's outputs so that any backward pass through them other than `engine.backward` fails
(under ZeRO-0 always), and `torch.autograd.grad` is such a pass. The summed loss then goes to
`engine.backward` as usual.

ZeRO-3 is refused for both: they run extra forward / backward passes (autograd.grad, a double
backward) outside DeepSpeed's engine.backward, and ZeRO-3's per-module parameter gathering and
release is driven by hooks that expect one forward and one backward per micro-step.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def find_word_embeddings(module) -> nn.Embedding:
    """The word-embedding table of a model or of a wrapper around one (a task head around an encoder)."""
    getter = getattr(module, "get_input_embeddings", None)
    if callable(getter):
        with contextlib.suppress(NotImplementedError):
            found = getter()
            if isinstance(found, nn.Embedding):
                return found
    for name, child in module.named_modules():
        if name.endswith("word_embeddings") and isinstance(child, nn.Embedding):
            return child
    raise ValueError("no word-embedding table found (expected get_input_embeddings() or a "
                     "'word_embeddings' nn.Embedding)")


@contextlib.contextmanager
def _tap(embedding: nn.Embedding, change=None):
    """Record (ids, output) of every call of `embedding`; `change(ids, output)` may replace the output."""
    calls = []

    def hook(_module, inputs, output):
        ids = inputs[0]
        if change is not None:
            output = change(ids, output)
        calls.append((ids, output))
        return output

    handle = embedding.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _model_loss(engine, batch):
    return engine(**batch).loss


class FGM:
    name = "fgm"
    refused_under_zero3 = "extra forward and gradient passes outside engine.backward break ZeRO-3's gather hooks"

    def __init__(self, epsilon: float = 0.5, loss_of=_model_loss):
        self.epsilon, self.loss_of = epsilon, loss_of

    def perturbation(self, embedding: nn.Embedding, calls, loss) -> torch.Tensor:
        """r = eps * g / ||g|| over the embedding matrix, g = dL/dW gathered from dL/de."""
        outputs = [out for _, out in calls]
        grads = torch.autograd.grad(loss, outputs, retain_graph=True, allow_unused=True)
        weight = embedding.weight
        g = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for (ids, _), grad in zip(calls, grads):
            if grad is not None:
                g.index_add_(0, ids.reshape(-1), grad.reshape(-1, grad.shape[-1]).float())
        norm = g.norm()
        if not torch.isfinite(norm) or norm == 0:
            return torch.zeros_like(g)
        return self.epsilon * g / norm

    def loss(self, engine, batch) -> torch.Tensor:
        module = getattr(engine, "module", engine)
        embedding = find_word_embeddings(module)
        with _tap(embedding) as calls:
            loss = self.loss_of(module, batch)
        r = self.perturbation(embedding, calls, loss).detach()
        with _tap(embedding, change=lambda ids, out: out + r[ids].to(out.dtype)):
            adversarial = self.loss_of(module, batch)
        return loss + adversarial


class GradientPenalty:
    name = "gradient_penalty"
    refused_under_zero3 = "a double backward outside engine.backward breaks ZeRO-3's gather hooks"

    def __init__(self, epsilon: float = 1.0, loss_of=_model_loss):
        self.epsilon, self.loss_of = epsilon, loss_of

    def loss(self, engine, batch) -> torch.Tensor:
        module = getattr(engine, "module", engine)
        with _tap(find_word_embeddings(module)) as calls:
            loss = self.loss_of(module, batch)
        outputs = [out for _, out in calls]
        grads = torch.autograd.grad(loss, outputs, create_graph=True, allow_unused=True)
        penalty = sum((g.float() ** 2).sum() for g in grads if g is not None)
        return loss + 0.5 * self.epsilon * penalty
