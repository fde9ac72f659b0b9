"""Training tricks against their published update rules / formulas, each on a toy problem."""

import math

import pytest
import torch
from torch import nn

from suji_models.optim import (
    EMA,
    FGM,
    AdaX,
    ChildTuningD,
    ChildTuningF,
    GradientPenalty,
    RDrop,
    build_optimizer,
    check_zero_stage,
    fisher_information,
    layerwise_lr_groups,
    symmetric_kl,
)


# ------------------------------------------------------------------------------------------ AdaX

def test_adax_three_steps_by_hand():
    lr, b1, b2, eps, wd = 0.1, 0.9, 1e-4, 1e-6, 0.01
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = AdaX([w], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    theta, m, v = [1.0, -2.0], [0.0, 0.0], [0.0, 0.0]
    for t in range(1, 4):
        opt.zero_grad()
        (w ** 2).sum().backward()  # g = 2 w
        opt.step()
        for k in range(2):
            g = 2 * theta[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = (1 + b2) * v[k] + b2 * g * g
            v_hat = v[k] / ((1 + b2) ** t - 1)
            theta[k] *= 1 - lr * wd
            # the paper's form; equal to the post's lr_t m / (sqrt(v) + eps) up to where eps sits
            theta[k] -= lr * m[k] / (math.sqrt(v_hat) + eps * math.sqrt(1 / ((1 + b2) ** t - 1)))
        torch.testing.assert_close(w.detach(), torch.tensor(theta, dtype=torch.float64))


def test_adax_second_moment_is_an_unbiased_average_of_squared_gradients():
    # constant gradient g: v^_t = g^2 for every t, so the step is lr * m_t / |g| (m uncorrected)
    w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = AdaX([w], lr=1.0, eps=0.0)
    for t in range(1, 6):
        w.grad = torch.tensor([3.0], dtype=torch.float64)
        before = w.detach().clone()
        opt.step()
        m = 3.0 * (1 - 0.9 ** t)
        torch.testing.assert_close(before - w.detach(), torch.tensor([m / 3.0], dtype=torch.float64))


# ------------------------------------------------------------------------------------------ AdaFactor

def test_adafactor_one_step_is_the_factored_rms_clipped_update():
    torch.manual_seed(0)
    model = nn.Linear(3, 4, bias=False)
    w0 = model.weight.detach().clone()
    opt = build_optimizer(model, "adafactor", lr=0.01, weight_decay=0.0)
    x = torch.randn(5, 3)
    model(x).pow(2).sum().backward()
    g = model.weight.grad.detach().clone()
    opt.step()
    # step 1: beta2_t = 1 - 1^-0.8 = 0, so the moments are g^2 + eps1 themselves
    sq = g ** 2 + 1e-30
    r, c = sq.mean(1), sq.mean(0)
    v_hat = r[:, None] * c[None, :] / r.mean()  # the factored estimate R C^T / mean(R)
    update = g / v_hat.sqrt()
    update = update / max(1.0, (update.pow(2).mean().sqrt() / 1.0).item())  # clip the update's RMS at d=1
    torch.testing.assert_close(model.weight.detach(), w0 - 0.01 * update)


def test_adafactor_is_refused_under_zero():
    with pytest.raises(ValueError, match="ZeRO flattens"):
        build_optimizer(nn.Linear(2, 2), "adafactor", zero_stage=1)


# ------------------------------------------------------------------------------------------ layer-wise lr

class Stack(nn.Module):
    """Names like an encoder: embeddings, layers.<i>, a head."""

    def __init__(self, layers=3):
        super().__init__()
        self.embeddings = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(layers))
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)


def test_layerwise_lr_decay_rates_and_weight_decay_split():
    model = Stack(3)
    groups = layerwise_lr_groups(model, lr=1.0, decay=0.5, weight_decay=0.1)
    rate = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert rate[id(model.head.weight)] == (1.0, 0.1)
    assert rate[id(model.head.bias)] == (1.0, 0.0)
    assert rate[id(model.norm.weight)] == (1.0, 0.0)
    for i, layer in enumerate(model.layers):
        assert rate[id(layer.weight)] == (0.5 ** (3 - i), 0.1)
    assert rate[id(model.embeddings.weight)] == (0.5 ** 4, 0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for name in ("adamw", "adax"):
        assert [g["lr"] for g in build_optimizer(model, name, lr=1.0, layer_decay=0.5).param_groups] == \
            [g["lr"] for g in groups]


# ------------------------------------------------------------------------------------------ EMA

def test_ema_follows_the_recursion_and_swaps_weights_for_evaluation():
    model = nn.Linear(2, 1)
    ema = EMA(decay=0.9)
    ema.attach(model)
    expected = model.weight.detach().clone()
    for step in range(4):
        with torch.no_grad():
            model.weight.add_(1.0 + step)
        ema.after_step(model)
        expected = 0.9 * expected + 0.1 * model.weight.detach()
    raw = model.weight.detach().clone()
    with ema.applied(model):
        torch.testing.assert_close(model.weight.detach(), expected)
    torch.testing.assert_close(model.weight.detach(), raw)
    engine = Engine(model)  # with a step counter: only a changed counter moves the average
    engine.global_steps = 7
    ema.after_step(engine)
    moved = ema.shadow["weight"].clone()
    with torch.no_grad():
        model.weight.add_(5.0)
    ema.after_step(engine)  # a micro-step without an optimizer step
    torch.testing.assert_close(ema.shadow["weight"], moved)
    state = ema.state_dict()
    other = EMA(0.5)
    other.load_state_dict(state)
    assert other.decay == 0.9 and torch.equal(other.shadow["weight"], ema.shadow["weight"])


# ------------------------------------------------------------------------------------------ ChildTuning

class Engine:
    """The part of a DeepSpeed engine the tricks use: the module, the step counter, forward."""

    def __init__(self, module):
        self.module, self.global_steps = module, 0

    def __call__(self, **batch):
        return self.module(**batch)


def test_child_tuning_f_masks_and_rescales_the_gradient_per_step():
    model = Stack(2)
    engine = Engine(model)
    trick = ChildTuningF(reserve=0.3, seed=7)
    trick.attach(engine)
    weight = model.layers[1].weight
    index = [n for n, _ in trick.masked_parameters(model)].index("layers.1.weight")
    x = torch.randn(8, 4)

    def grad_at(step):
        engine.global_steps = step
        model.zero_grad()
        model.layers[1](model.layers[0](x)).sum().backward()
        return weight.grad.clone()

    trick.detach()
    raw = grad_at(3)
    trick.attach(engine)
    masked = grad_at(3)
    mask = trick.mask(index, 3, weight.shape, weight.device)
    torch.testing.assert_close(masked, raw * mask / 0.3)
    torch.testing.assert_close(grad_at(3), masked)  # same step, same mask (micro-batches, ranks)
    assert not torch.equal(grad_at(4) != 0, masked != 0)  # next step: a new mask
    big = trick.mask(0, 0, (100_000,), "cpu").float().mean().item()
    assert big == pytest.approx(0.3, abs=0.01)
    model.zero_grad()
    model.head(x).sum().backward()  # the head is not part of the child network: untouched
    assert (model.head.weight.grad != 0).all()


def test_child_tuning_d_keeps_the_top_fisher_fraction():
    model = Stack(2)
    batches = [{"x": torch.randn(4, 4)} for _ in range(3)]

    def loss_of(m, b):
        return m.head(m.layers[1](m.layers[0](b["x"]))).pow(2).mean()

    fisher = fisher_information(model, batches, loss_of)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for b in batches:
        grads = torch.autograd.grad(loss_of(model, b), list(model.parameters()), allow_unused=True)
        for (n, _), g in zip(model.named_parameters(), grads):
            if g is not None:
                expected[n] += g ** 2
    for n in fisher:
        torch.testing.assert_close(fisher[n], expected[n])
    trick = ChildTuningD(reserve=0.25).fit(fisher)
    selected = torch.cat([fisher[n].reshape(-1) for n in trick.masks])
    kept = torch.cat([trick.masks[n].reshape(-1) for n in trick.masks])
    assert kept.sum().item() == round(0.25 * selected.numel())
    assert selected[kept].min() >= selected[~kept].max()
    trick.attach(Engine(model))
    model.zero_grad()
    loss_of(model, batches[0]).backward()
    g = model.layers[0].weight.grad
    assert torch.equal(g == 0, ~trick.masks["layers.0.weight"] | (expected["layers.0.weight"] == 0))


# ------------------------------------------------------------------------------------------ FGM / GP

class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.word_embeddings = nn.Embedding(12, 5)
        self.hidden = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, input_ids, labels):
        h = torch.tanh(self.hidden(self.word_embeddings(input_ids))).mean(1)
        logits = self.out(h)
        return type("Out", (), {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits})()


BATCH = {"input_ids": torch.tensor([[1, 2, 3, 2], [4, 5, 1, 1]]), "labels": torch.tensor([0, 2])}


def test_fgm_gives_the_gradients_of_the_two_pass_published_algorithm():
    model = TinyClassifier()
    FGM(epsilon=0.5).loss(Engine(model), BATCH).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    # bert4keras / the usual FGM: backward, perturb the embedding matrix by eps g/||g||, backward, restore
    ref = TinyClassifier()
    ref(**BATCH).loss.backward()
    g = ref.word_embeddings.weight.grad.clone()
    with torch.no_grad():
        ref.word_embeddings.weight.add_(0.5 * g / g.norm())
    ref(**BATCH).loss.backward()
    with torch.no_grad():
        ref.word_embeddings.weight.sub_(0.5 * g / g.norm())
    for n, p in ref.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, msg=n)


def test_gradient_penalty_equals_loss_plus_half_eps_squared_input_gradient():
    model = TinyClassifier()
    total = GradientPenalty(epsilon=2.0).loss(Engine(model), BATCH)
    e = model.word_embeddings(BATCH["input_ids"]).detach().requires_grad_()
    h = torch.tanh(model.hidden(e)).mean(1)
    loss = nn.functional.cross_entropy(model.out(h), BATCH["labels"])
    (g,) = torch.autograd.grad(loss, e)
    torch.testing.assert_close(total, loss + 0.5 * 2.0 * (g ** 2).sum())
    total.backward()  # differentiable through the penalty (double backward)
    assert model.hidden.weight.grad.abs().sum() > 0


def test_gradient_penalty_double_backward_through_a_suji_encoder():
    import suji_models as S
    from suji_models.tasks.classification import SujiForTextClassification, set_classification_config

    config = set_classification_config(S.SujiConfig.from_preset("roformer-tiny", vocab_size=50), ["a", "b", "c"])
    model = SujiForTextClassification(config).train()
    batch = {"input_ids": torch.randint(1, 50, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long),
             "labels": torch.tensor([0, 2])}
    GradientPenalty().loss(Engine(model), batch).backward()
    assert all(p.grad is not None for p in model.classifier.parameters())


# ------------------------------------------------------------------------------------------ R-Drop

def test_rdrop_is_mean_ce_plus_alpha_quarter_symmetric_kl():
    model = TinyClassifier()
    dropout = nn.Dropout(0.5)
    model.hidden = nn.Sequential(model.hidden, dropout)
    torch.manual_seed(3)
    total = RDrop(alpha=4.0).loss(Engine(model.train()), BATCH)
    torch.manual_seed(3)
    doubled = {"input_ids": BATCH["input_ids"].repeat_interleave(2, 0), "labels": BATCH["labels"].repeat_interleave(2, 0)}
    logits = model(**doubled).logits
    p = logits.softmax(-1)
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    ce = nn.functional.cross_entropy(logits, doubled["labels"])
    expected = ce + 4.0 / 4 * (kl(p[0::2], p[1::2]) + kl(p[1::2], p[0::2])).mean()
    torch.testing.assert_close(total, expected)
    assert symmetric_kl(logits[0::2], logits[1::2]).min() > 0  # two dropout masks differ


def test_zero_stage_checks():
    check_zero_stage([EMA(), ChildTuningF(), RDrop()], 2)
    check_zero_stage([RDrop()], 3)
    for trick in (EMA(), ChildTuningF(), ChildTuningD(), FGM(), GradientPenalty()):
        with pytest.raises(ValueError, match="ZeRO-3"):
            check_zero_stage([trick], 3)
    with pytest.raises(ValueError, match="at most one"):
        check_zero_stage([FGM(), RDrop()], 1)


# ------------------------------------------------------------------------------------------ recipe options

def test_trick_options_become_step_hooks():
    from types import SimpleNamespace

    from suji_models.optim.hooks import TrickOptions, step_hooks

    args = SimpleNamespace(deepspeed_config=None, zero_stage=None, seed=0, learning_rate=0.1, weight_decay=0.0)
    assert step_hooks(TrickOptions(), args) is None  # nothing switched on: the plain step
    with pytest.raises(ValueError, match="ZeRO-3"):
        step_hooks(TrickOptions(loss_trick="fgm"), SimpleNamespace(**{**vars(args), "zero_stage": 3}))
    with pytest.raises(ValueError, match="adafactor"):
        step_hooks(TrickOptions(optimizer="adafactor"), SimpleNamespace(**{**vars(args), "zero_stage": 2}))
    assert step_hooks(TrickOptions(loss_trick="rdrop"), SimpleNamespace(**{**vars(args), "zero_stage": 3}))

    class BackwardEngine(Engine):
        device = torch.device("cpu")

        def backward(self, loss):
            loss.backward()

    class Layered(TinyClassifier):
        """The same model with its hidden layer named `layers.0` (what ChildTuning masks)."""

        hidden = property(lambda self: self.layers[0])

        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([self._modules.pop("hidden")])

    model = Layered()
    hooks = step_hooks(TrickOptions(optimizer="adax", layer_decay=0.5, loss_trick="gradient_penalty",
                                    child_tuning="d", child_tuning_reserve=0.5), args,
                       lambda i: BATCH, num_batches=1)
    optimizer = hooks.optimizer(model, args)
    assert isinstance(optimizer, AdaX) and sorted({g["lr"] for g in optimizer.param_groups}) == [0.025, 0.05, 0.1]
    engine = BackwardEngine(model)
    loss = hooks.forward_backward(engine, BATCH)
    expected = GradientPenalty(1.0).loss(Engine(TinyClassifier()), BATCH)
    torch.testing.assert_close(loss, expected)
    kept = (model.hidden.weight.grad != 0).float().mean().item()
    assert 0.3 < kept <= 0.5  # ChildTuning-D's mask reached the layer's gradient
