"""The finetune driver: every `finetune/*.py` recipe is a :class:`Task` run by :func:`run`.

A task supplies only what is its own (see :class:`Task`): its options dataclass, `read`, `encode`,
`collate`, `configure` (the head's settings on the encoder config), its model class, `predict`
(scoring logits, or generating) and `metric` (counts that add up across ranks). The driver owns
the rest, the same for every recipe:

- distributed start and stop (DeepSpeed; gloo on CPU, nccl on GPU), ZeRO 0-3;
- the tokenizer and encoder: ``--model FOLDER`` (a Suji checkpoint, a transformers bert / roformer /
  albert / gpt2 folder or a TF checkpoint folder; its tokenizer unless ``--tokenizer``) or
  ``--model_preset NAME --model_overrides JSON --tokenizer VOCAB`` for a randomly initialized one;
- data: ``--train_file`` / ``--dev_file``, or a seeded split of the train file (``--dev_fraction``,
  ``--split_seed``; a task may split by passage / document instead), seeded subsets for short runs
  (``--train_limit`` / ``--dev_limit``); epochs -> steps; each rank reads its own rows;
- the training tricks of `suji_models.optim` (`optim.hooks.TrickOptions`: AdaX / AdaFactor, layer-wise
  lr decay, FGM, gradient penalty, ChildTuning, EMA; R-Drop where the task sets `supports_rdrop`),
  and ``--head_learning_rate`` for a fresh head;
- evaluation every epoch (or ``--eval_steps``) on each rank's share of dev, counts summed across
  ranks, the best checkpoint kept in ``OUTPUT_DIR/best``; after training the best checkpoint is
  reloaded and evaluated once more, and ``OUTPUT_DIR/results.json`` written;
- ``--predict FILE`` (after training, or alone with ``--do_train false --model CHECKPOINT``) writes
  JSONL predictions.

Under ZeRO-3 every forward is a collective (each rank gathers the layer's shards), so during
training all ranks must run the same number of forwards: the driver evaluates in lockstep (ranks
with fewer dev batches repeat their last one until all are done). Generating tasks are refused
under ZeRO-3 (see `run`). After training, the best checkpoint is evaluated as a plain module on
every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from ..configuration import PRESETS, SujiConfig
from ..optim.hooks import TrickOptions, step_hooks
from ..tasks.metrics import scores_from_counts
from ..tasks.output import write_jsonl
from ..tasks.readers import split_examples, subsample
from .data import RowSource
from .checkpoint import newest_layout, save_final
from .errors import as_user_errors, check_resume, run_main
from .loop import (Evaluation, StepHooks, TrainArgs, build_optimizer, deepspeed_config, finish_distributed,
                   init_distributed, keep_global_batch, release_zero3_hook, train)
from .options import option, parse_args

DRIVER_READY = True  # the driver, its test (tests/test_finetune_driver.py) and the NER port are in place


@dataclass
class FinetuneArgs:
    """Options every finetuning recipe shares (data, encoder, evaluation, prediction)."""

    train_file: str = option("", "training data (the task's format)")
    dev_file: str = option("", "evaluation data; without it the train file is split (--dev_fraction, --split_seed)")
    dev_fraction: float = option(0.2, "without --dev_file: the share of --train_file held out")
    split_seed: int = option(0, "seed of the train/dev split")
    train_limit: int = option(0, "train on at most this many examples, a subset drawn with --split_seed after "
                                 "the split (0: all; for short CPU runs)")
    dev_limit: int = option(0, "evaluate on at most this many dev examples, a subset drawn with --split_seed "
                               "(0: all; for short CPU runs)")
    model: str = option("", "encoder or finetuned checkpoint folder (Suji, transformers bert/roformer/albert/gpt2, "
                            "or TF checkpoint); empty: a random --model_preset")
    model_preset: str = option("roformer-tiny", "without --model: the architecture of a randomly initialized "
                                                "encoder", choices=tuple(PRESETS))
    model_overrides: str = option("", "JSON object of config fields over --model_preset, e.g. "
                                      "'{\"hidden_size\": 256, \"num_hidden_layers\": 4}'")
    tokenizer: str = option("", "tokenizer folder, vocab.txt or sentencepiece .model (default: the --model folder)")
    max_seq_length: int = option(128, "tokens per training row (longer inputs are truncated or windowed, "
                                      "as the task says)")
    epochs: float = option(3.0, "training epochs, used when --max_steps is 0")
    group_by_length: bool = option(False, "batch training rows of similar length (shuffled within groups of 50 "
                                          "batches): less padding, faster for long-tailed lengths")
    eval_steps: int = option(0, "evaluate every N steps (0: once per epoch, and after the last step)")
    eval_batch_size: int = option(64, "rows per evaluation / prediction batch")
    do_train: bool = option(True, "false: only evaluate (--dev_file, or the held-out split of --train_file) and/or "
                                  "--predict with the --model checkpoint")
    predict: str = option("", "file to predict after training (the task's input format)")
    predict_output: str = option("", "where predictions go (default OUTPUT_DIR/predictions.jsonl)")
    head_learning_rate: float = option(0.0, "learning rate of the task head (the parameters outside the encoder); "
                                            "0: --learning_rate. A fresh head with a large loss (GPLinker's link "
                                            "pointers) can wreck a pretrained encoder trained at the head's rate")


# The loop's defaults are pretraining's; finetuning starts from these (a task or script may change them).
FINETUNE_DEFAULTS = dict(output_dir="runs/finetune", max_steps=0, learning_rate=2e-5, per_device_batch_size=16,
                         warmup_steps=0, log_steps=50, save_total_limit=1)


class UsageError(SystemExit):
    """A mistake in how the recipe was called; the message says what to change (reported once, as the
    run's last line, by `training.errors.run_main`)."""


class Task:
    """What a recipe supplies. Subclass it, set the class attributes, implement the methods marked
    'required'; the defaults suit most tasks.

    Attributes: `Options` (the task's options dataclass, or None), `model_class` (a
    `SujiPreTrainedModel` subclass that `configure`d configs build and `from_pretrained` reloads),
    `best_metric` / `greater_is_better` (which evaluation number picks the best checkpoint),
    `generates` (True when `predict` calls `generate()`), `defaults` (option defaults of this task,
    e.g. its learning rate). The driver sets `self.options`, `self.args` (:class:`FinetuneArgs`),
    `self.tokenizer` and `self.say` (prints on rank 0 only)."""

    Options = None
    model_class = None
    best_metric = "f1"
    greater_is_better = True
    generates = False
    supports_rdrop = False  # R-Drop needs one softmax prediction per example (`.logits` [B, C])
    defaults: dict = {}
    tricks = TrickOptions()  # the driver sets the parsed options

    def __init__(self, options, args: FinetuneArgs, tokenizer, say=print):
        self.options, self.args, self.tokenizer, self.say = options, args, tokenizer, say
        self.notes: dict = {}  # anything the task wants in results.json (alignment reports, skips, ...)

    # ---- data ----------------------------------------------------------------------------------
    def read(self, path) -> list:
        """Required: examples of a data file (gold labels included when the file has them)."""
        raise NotImplementedError

    split_rule: str | None = None  # how an overriding `split` chose dev, for the log and results.json

    def split(self, examples) -> tuple[list, list]:
        """(train, dev) when no --dev_file is given: a seeded shuffle. Override to split by group (and
        say how in `self.split_rule`)."""
        return split_examples(examples, self.args.dev_fraction, self.args.split_seed)

    def read_predict(self, path) -> list:
        """Examples to predict from --predict: by default the task's own format."""
        return self.read(path)

    def describe(self, train_examples, dev_examples) -> None:
        """Called once the data is read: report what the task found (e.g. spans that do not align)."""

    def encode(self, examples) -> list[dict]:
        """Required: training rows (dicts of lists) from examples."""
        raise NotImplementedError

    def collate(self, rows) -> dict:
        """Required: a batch of tensors (with the loss's labels) from training rows."""
        raise NotImplementedError

    # ---- model ---------------------------------------------------------------------------------
    def configure(self, config: SujiConfig, train_examples) -> SujiConfig:
        """Write the head's settings (label names, sizes) into the encoder's config."""
        return config

    def build_model(self, config: SujiConfig, path: str | None):
        """A new model: the encoder of `path` (None: random) with a fresh head."""
        if path:
            return self.model_class.from_pretrained(path, config=config)
        return self.model_class(config)

    def step_hooks(self, args, rows=()):
        """The `training.loop.StepHooks` of the training tricks switched on (`self.tricks`: the
        `optim.hooks.TrickOptions` every recipe takes), else None. `rows`: the training rows, over whose
        first batches ChildTuning-D sums its Fisher information."""
        if self.tricks.loss_trick == "rdrop" and not self.supports_rdrop:
            raise ValueError("--loss_trick rdrop compares the two softmax predictions of each example: "
                             "single-label classification only; use fgm or gradient_penalty")
        size = args.per_device_batch_size
        return step_hooks(self.tricks, args, lambda i: self.collate(rows[i * size:(i + 1) * size]),
                          num_batches=-(-len(rows) // size))

    # ---- evaluation and prediction ---------------------------------------------------------------
    def predict(self, model, examples, forward) -> list:
        """Required: one prediction per example, in the dataset's own terms. `forward(batch)` runs the
        model on a batch (moving it to the model's device) and returns its output; a generating task
        calls `model.generate` instead. Batch by count (e.g. `tasks.batching.length_batches`)."""
        raise NotImplementedError

    def metric(self, examples, predictions) -> Counter:
        """Required: counts (tp / gold / pred ...) that add up across ranks, keyed as `scores` expects."""
        raise NotImplementedError

    def scores(self, counts: Counter) -> dict:
        """Numbers from the summed counts; must hold `best_metric`. Default: micro P/R/F1."""
        return scores_from_counts(counts)

    def write_predictions(self, path, examples, predictions) -> Path:
        """The prediction file; default JSONL of {"prediction": ...} per example."""
        return write_jsonl(path, ({"prediction": p} for p in predictions))


def _say(rank):
    return (lambda *a, **k: print(*a, **{"flush": True, **k})) if rank == 0 else (lambda *a, **k: None)


def _device_forward(model, device):
    def forward(batch):
        return model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})

    return forward


class _Lockstep:
    """ZeRO-3 evaluation: counts this rank's forwards so that `drain` can repeat the last batch until
    every rank has run as many (each forward gathers parameter shards from all ranks)."""

    def __init__(self, forward):
        self.forward, self.calls, self.last = forward, 0, None

    def __call__(self, batch):
        self.calls, self.last = self.calls + 1, batch
        return self.forward(batch)

    def drain(self):
        most = torch.tensor(self.calls)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        if self.calls < int(most) and self.last is None:
            raise RuntimeError("ZeRO-3 evaluation: this rank had no dev batch to repeat (fewer dev examples "
                               "than ranks)")
        for _ in range(int(most) - self.calls):
            self.forward(self.last)


def sum_across_ranks(counts: Counter) -> Counter:
    """Counts of every rank added up (any hashable keys, e.g. tuples like ("", "tp"))."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return Counter(counts)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(counts))
    total = Counter()
    for part in gathered:
        total.update(part)
    return total


def evaluate_shard(task: Task, model, examples, rank: int, world: int, forward, lockstep: bool = False) -> dict:
    """This rank's share of `examples` predicted and counted; the scores of the counts of all ranks."""
    mine = examples[rank::world]
    if lockstep:
        forward = _Lockstep(forward)
    predictions = task.predict(model, mine, forward) if mine else []
    if lockstep:
        forward.drain()
    return task.scores(sum_across_ranks(task.metric(mine, predictions)))


def _interleave(parts: list[list]) -> list:
    """Examples back in order from per-rank lists (rank r held examples r, r + world, ...)."""
    out = [None] * sum(len(part) for part in parts)
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out


def _gather_predictions(predictions, world: int):
    """Every rank's predictions, in example order."""
    if world == 1:
        return predictions
    gathered = [None] * world
    dist.all_gather_object(gathered, predictions)
    return _interleave(gathered)


def encoder_config(common: FinetuneArgs, tokenizer) -> SujiConfig:
    """The encoder's config: from the --model checkpoint, or the preset with its overrides."""
    if common.model:
        from ..convert.loading import checkpoint_config

        return checkpoint_config(common.model)
    return SujiConfig.from_preset_options(common.model_preset, common.model_overrides, common.max_seq_length,
                                          vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)


def load_data(task: Task, common: FinetuneArgs):
    """(train examples, dev examples, how dev was chosen). Without training, dev is --dev_file, or else
    the held-out part of --train_file's split (the same seeded split the training run made)."""
    if common.do_train and not common.train_file:
        raise UsageError("--train_file is required for training (or --do_train false with --model)")
    if common.dev_file:
        train_examples = task.read(common.train_file) if common.do_train else []
        dev, split = task.read(common.dev_file), f"dev = {common.dev_file}"
    elif common.train_file:
        train_examples, dev = task.split(task.read(common.train_file))
        split = f"{common.train_file} split " + (
            task.split_rule or f"{1 - common.dev_fraction:.0%}/{common.dev_fraction:.0%} (seed {common.split_seed})")
        if not common.do_train:
            train_examples, split = [], f"dev = the held-out part of {split}"
    else:
        train_examples, dev, split = [], [], "no dev set"
    if common.train_limit and common.train_limit < len(train_examples):
        split += f"; training on {common.train_limit} of {len(train_examples)} examples (--train_limit)"
        train_examples = subsample(train_examples, common.train_limit, common.split_seed)
    if common.dev_limit and common.dev_limit < len(dev):
        split += f"; evaluating on {common.dev_limit} of {len(dev)} dev examples (--dev_limit)"
        dev = subsample(dev, common.dev_limit, common.split_seed)
    return train_examples, dev, split


def run(task_class, argv=None, **defaults) -> dict | None:
    """A recipe's entry point: parse the options, then train, evaluate and predict with `task_class`.
    Returns the results (on rank 0; None elsewhere). A mistake in the options or data ends the run
    with one message, printed once (`training.errors.run_main`)."""
    return run_main(_run, task_class, argv, **defaults)


def _run(task_class, argv=None, **defaults) -> dict | None:
    classes = (FinetuneArgs, *((task_class.Options,) if task_class.Options else ()), TrickOptions, TrainArgs)
    parsed = parse_args(classes, argv, **{**FINETUNE_DEFAULTS, **task_class.defaults, **defaults})
    common, tricks, args = parsed[0], parsed[-2], parsed[-1]
    options = parsed[1] if task_class.Options else None
    rank, world = init_distributed()
    say = _say(rank)
    ds_config = deepspeed_config(args, world)  # a contradicting DeepSpeed JSON fails here, before any data work
    zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
    if zero3 and task_class.generates:
        raise UsageError("this recipe generates text during evaluation; under ZeRO-3 every decoding step of every "
                         "rank would have to gather all shards in lockstep: use ZeRO stage 0-2 (a finetuned "
                         "model that needs ZeRO-3 to train can be evaluated afterwards with --do_train false)")
    if not (common.tokenizer or common.model):
        raise UsageError("--tokenizer is required with --model_preset (or give --model)")
    from tokenization import load_tokenizer

    with as_user_errors(ValueError, OSError, prefix="--tokenizer " if common.tokenizer else "--model "):
        tokenizer = load_tokenizer(common.tokenizer or common.model)
    task = task_class(options, common, tokenizer, say)
    task.tricks = tricks
    with as_user_errors(ValueError, OSError):  # a reader's error names the file, line and field
        train_examples, dev_examples, split = load_data(task, common)
    task.describe(train_examples, dev_examples)
    output_dir = Path(args.output_dir)
    results = {"split": split, "train_examples": len(train_examples), "dev_examples": len(dev_examples),
               "args": {**dataclasses.asdict(common), **(dataclasses.asdict(options) if options else {}),
                        **dataclasses.asdict(tricks), **dataclasses.asdict(args)}}
    if common.do_train:
        if dev_examples and len(dev_examples) < world and zero3:
            raise UsageError(f"{len(dev_examples)} dev examples for {world} ranks: ZeRO-3 evaluation needs one per rank")
        results.update(_train(task, common, args, train_examples, dev_examples, split, rank, world, zero3, say))
        if results.get("stopped_at"):  # --stop_at_step: a checkpoint to resume from, no final evaluation yet
            finish_distributed()
            return None
        model_path = output_dir / "best" if dev_examples else output_dir / "final"
    else:
        if not common.model:
            raise UsageError("--do_train false needs --model (a finetuned checkpoint of this task)")
        if not dev_examples and not common.predict:
            raise UsageError("--do_train false: nothing to evaluate or predict; give --dev_file, --train_file (its "
                             "held-out split is evaluated) or --predict")
        model_path = Path(common.model)
    model = task.model_class.from_pretrained(model_path).eval()
    results.update(_final_evaluation(task, model, dev_examples, common, output_dir, rank, world, say))
    if rank == 0:
        results.update(task.notes)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    finish_distributed()
    return results if rank == 0 else None


def _train(task, common, args, train_examples, dev_examples, split, rank, world, zero3, say) -> dict:
    with as_user_errors(ValueError, OSError, prefix="--model " if common.model else "--model_overrides "):
        config = task.configure(encoder_config(common, task.tokenizer), train_examples)
    check_resume(args.output_dir, config, args.resume)
    rows = task.encode(train_examples)
    if not rows:
        raise UsageError(f"{common.train_file}: no training rows after encoding")
    lengths = [len(row["input_ids"]) for row in rows] if common.group_by_length else None
    source = RowSource(rows, args.per_device_batch_size, args.seed, lengths)
    if args.resume:  # a run resumed on another number of processes keeps its global batch, hence its steps
        path, layout = newest_layout(Path(args.output_dir))
        kept = keep_global_batch(args, layout, world, path, say=say)
        args.gradient_accumulation_steps = kept.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(rows) / (args.per_device_batch_size * args.gradient_accumulation_steps * world))
    if not args.max_steps:
        args.max_steps = max(1, math.ceil(common.epochs * steps_per_epoch))
    eval_steps = common.eval_steps or steps_per_epoch
    say(f"data: {len(train_examples)} train / {len(dev_examples)} dev examples ({split}); {len(rows)} training rows")
    say(f"training {args.max_steps} steps ({args.max_steps / steps_per_epoch:.1f} epochs of {steps_per_epoch})"
        + (f", evaluating every {eval_steps} steps" if dev_examples else ", no dev set: the last step is kept"))

    def batches(index, rank, world):
        ids = source.indices(index, rank, world)
        return {**task.collate([rows[i] for i in ids]), "sample_ids": ids}  # ids for --log_samples

    history = []

    def evaluate(engine, step):
        started = time.time()
        forward = _device_forward(engine, engine.device)
        metrics = evaluate_shard(task, engine.module, dev_examples, rank, world, forward, lockstep=zero3)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        numbers["seconds"] = round(time.time() - started, 2)
        history.append({"step": step, **numbers})
        return numbers

    started = time.time()
    evaluation = Evaluation(evaluate, eval_steps, task.best_metric, task.greater_is_better) if dev_examples else None
    with as_user_errors(ValueError):  # a trick or optimizer the ZeRO stage refuses: one line, the reason
        hooks = _with_head_learning_rate(task.step_hooks(args, rows), common.head_learning_rate)
    losses, engine = train(lambda: task.build_model(config, common.model or None), batches, args,
                           save_files=task.tokenizer.save_pretrained, evaluation=evaluation, hooks=hooks)
    if args.stop_at_step and losses and losses[-1][0] == args.stop_at_step < args.max_steps:
        return {"stopped_at": args.stop_at_step}
    if not dev_examples:
        with hooks.evaluated_weights(engine) if hooks is not None else contextlib.nullcontext():
            save_final(engine, args.output_dir, task.tokenizer, export=False)
    release_zero3_hook()
    record = {}
    best = Path(args.output_dir) / "best" / "eval_metrics.json"
    if rank == 0 and best.is_file():
        record = json.loads(best.read_text())
    dist.barrier()
    return {"steps": args.max_steps, "steps_per_epoch": steps_per_epoch, "best_step": record.get("step"),
            "train_seconds": round(time.time() - started, 1), "history": history,
            "loss_first_last": [losses[0][1], losses[-1][1]] if losses else None}


def _with_head_learning_rate(hooks, head_lr: float):
    """`hooks` (or plain ones) whose optimizer gives the task head `head_lr` (when set)."""
    if not head_lr:
        return hooks
    if hooks is not None and hooks.optimizer is not None:
        raise UsageError("--head_learning_rate sets up its own AdamW: it cannot be combined with this recipe's "
                         "optimizer options (--optimizer / --layer_decay)")
    return dataclasses.replace(hooks or StepHooks(), optimizer=partial(build_optimizer, head_lr=head_lr))


def _final_evaluation(task, model, dev_examples, common, output_dir, rank, world, say) -> dict:
    """Dev scores of the kept model (each rank its share) and --predict; returns what goes in results."""
    out = {"parameters": sum(p.numel() for p in model.parameters())}
    forward = _device_forward(model, next(model.parameters()).device)
    if dev_examples:
        with torch.no_grad():
            scores = evaluate_shard(task, model, dev_examples, rank, world, forward)
        out["dev"] = scores
        order = [task.best_metric] + [k for k in scores if k != task.best_metric]
        headline = " ".join(f"{k} {scores[k]:.4f}" for k in order if isinstance(scores[k], float))
        say(f"summary: dev {headline}")
    if common.predict:
        with as_user_errors(ValueError, OSError):
            examples = task.read_predict(common.predict)
        with torch.no_grad():
            mine = examples[rank::world]
            predictions = _gather_predictions(task.predict(model, mine, forward) if mine else [], world)
        if rank == 0:
            path = task.write_predictions(common.predict_output or output_dir / "predictions.jsonl", examples,
                                          predictions)
            out["predictions"] = str(path)
            say(f"predictions: {path} ({len(examples)} examples)")
    return out


__all__ = ["DRIVER_READY", "FinetuneArgs", "Task", "UsageError", "run", "evaluate_shard", "sum_across_ranks"]
