"""ChildTuning ("ChildTuning：试试把Dropout加到梯度上去？", kexue.fm/archives/8764; Xu et al. 2021, "Raise a
Child in Large Language Model"): update only a "child network" of the parameters by masking the
gradient before the optimizer sees it.

- ChildTuning-F (task-free): every optimizer step draws a fresh Bernoulli(p) mask per element and
  rescales what is kept, g <- g * M / p: dropout applied to the gradient (the post's reading).
- ChildTuning-D (task-driven): one fixed mask, chosen before training from the Fisher information
  F_w = sum over training batches of (dL/dw)^2: the `reserve` fraction of weights with the largest
  F (one threshold over all masked parameters) is updated, the rest never: g <- g * M.

As the post observes, with Adam the masked entries still move through the momentum, so the mask acts
on the gradient, not strictly on which weights change.

How it is applied: a hook on each parameter's gradient (`Tensor.register_hook`) multiplies the
gradient by the mask before it is accumulated into `.grad`. DeepSpeed ZeRO-1/2 reduce gradients in
hooks that run *after* accumulation, so they see the masked gradient and the trick composes with
them unchanged. The mask of ChildTuning-F is a function of (seed, optimizer step, parameter index)
-- the step read from the engine's counter -- so all ranks and all micro-batches of one step draw
the same mask, and a resumed run draws the same masks again.
ZeRO-3 is refused: its parameters are partitioned and gathered per module, and the full-size
masks (-D keeps one per parameter on every rank) would undo the partitioning the user asked for.
"""

from __future__ import annotations

import re

import torch

_LAYER = re.compile(r"(?:^|\.)layers?\.\d+\.")  # Suji's `layers.<i>.`, BERT's `layer.<i>.`


def _default_selection(name: str) -> bool:
    """The paper masks the encoder's layers; the embeddings and the task head are updated in full."""
    return _LAYER.search(name) is not None


class _GradientMask:
    refused_under_zero3 = ("ZeRO-3 partitions parameters; full-size gradient masks per rank would undo it "
                           "(and -D's Fisher needs whole gradients)")

    def __init__(self, select=None):
        self.select = select or _default_selection
        self.handles = []

    def masked_parameters(self, model):
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and self.select(n)]

    def attach(self, engine, step_of=None) -> None:
        """Register the gradient hooks on the engine's module. `step_of()` returns the current
        optimizer step (default: the engine's `global_steps`)."""
        module = getattr(engine, "module", engine)
        step_of = step_of or (lambda: int(getattr(engine, "global_steps", 0)))
        for index, (name, p) in enumerate(self.masked_parameters(module)):
            self.handles.append(p.register_hook(self._hook(index, name, p, step_of)))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class ChildTuningF(_GradientMask):
    name = "child_tuning_f"

    def __init__(self, reserve: float = 0.3, seed: int = 0, select=None):
        super().__init__(select)
        if not 0 < reserve <= 1:
            raise ValueError(f"ChildTuning reserve must be in (0, 1], got {reserve}")
        self.reserve, self.seed = reserve, seed

    def mask(self, index: int, step: int, shape, device) -> torch.Tensor:
        """The Bernoulli(reserve) mask of parameter `index` at optimizer step `step`."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 10_007 + index)
        return (torch.rand(shape, generator=generator) < self.reserve).to(device)

    def _hook(self, index, name, p, step_of):
        def hook(grad):
            return grad * self.mask(index, step_of(), grad.shape, grad.device).to(grad.dtype) / self.reserve
        return hook


def fisher_information(model, batches, loss_of=None) -> dict[str, torch.Tensor]:
    """F_w = sum over `batches` of (dL/dw)^2 for every trainable parameter, with the model's own
    loss (`loss_of(model, batch)`, default `model(**batch).loss`). Dropout stays as the model is set.
    Under torch.distributed the sums of all ranks are added, so every rank gets the same F (and mask)."""
    loss_of = loss_of or (lambda m, b: m(**b).loss)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    for batch in batches:
        # autograd.grad, not backward(): nothing lands in .grad, so no DeepSpeed reduction hook fires
        grads = torch.autograd.grad(loss_of(model, batch), [p for _, p in named], allow_unused=True)
        for (n, _), g in zip(named, grads):
            if g is not None:
                fisher[n] += g.detach().float() ** 2
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        # each rank saw its own batches: sum them, so every rank derives the same mask
        for value in fisher.values():
            dist.all_reduce(value)
    return fisher


class ChildTuningD(_GradientMask):
    name = "child_tuning_d"

    def __init__(self, reserve: float = 0.3, select=None):
        super().__init__(select)
        if not 0 < reserve <= 1:
            raise ValueError(f"ChildTuning reserve must be in (0, 1], got {reserve}")
        self.reserve = reserve
        self.masks: dict[str, torch.Tensor] | None = None

    def fit(self, fisher: dict[str, torch.Tensor]) -> "ChildTuningD":
        """Keep the top `reserve` fraction of the selected parameters by Fisher information (one
        threshold over all of them, as in the paper's code: the (1 - reserve) quantile)."""
        chosen = {n: f for n, f in fisher.items() if self.select(n)}
        if not chosen:
            raise ValueError("ChildTuning-D: no parameter selected (check the selection function)")
        values = torch.cat([f.reshape(-1) for f in chosen.values()])
        k = max(1, int(round(self.reserve * values.numel())))
        threshold = torch.topk(values, k).values.min()
        self.masks = {n: f >= threshold for n, f in chosen.items()}
        return self

    def prepare(self, model, batches, loss_of=None) -> None:
        """Before training (on the plain model, before DeepSpeed wraps it): Fisher -> mask."""
        self.fit(fisher_information(model, batches, loss_of))

    def _hook(self, index, name, p, step_of):
        if self.masks is None:
            raise RuntimeError("ChildTuning-D: call prepare(model, batches) or fit(fisher) before attach()")
        mask = self.masks[name]

        def hook(grad):
            return grad * mask.to(device=grad.device, dtype=grad.dtype)
        return hook
