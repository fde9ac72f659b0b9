"""The finetune driver with the two toy recipes of tests/finetune_toy.py: training, evaluation
(counts summed across 2 ranks), best checkpoint, results.json, predict mode, ZeRO-3, refusals."""

import json
from collections import Counter

import pytest
import torch

from suji_models import SujiForSequenceClassification
from suji_models.training.finetune import FinetuneArgs, Task, _interleave, load_data, sum_across_ranks
from tokenization import load_tokenizer

from .conftest import REPO_ROOT
from .test_pretrain_e2e import launch, ok

VOCAB = REPO_ROOT / "pretrain" / "data" / "vocab.txt"
SAMPLE = REPO_ROOT / "pretrain" / "data" / "peoples_daily_1998_sample.txt"
TINY = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64})


def classify_data(tmp_path, n_train=300, n_dev=41):
    """Real sentences; the label says whether the sentence has a full-width comma (learnable from characters)."""
    lines = [line.strip() for line in SAMPLE.read_text(encoding="utf-8").splitlines() if 4 <= len(line.strip()) <= 60]
    rows = [f"{int('，' in line)}\t{line}" for line in lines]
    (tmp_path / "train.tsv").write_text("\n".join(rows[:n_train]), encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[n_train:n_train + n_dev]), encoding="utf-8")
    return [r.split("\t") for r in rows[n_train:n_train + n_dev]]


def toy(task, *args, procs=2):
    return ["tests/finetune_toy.py", task, "--tokenizer", VOCAB, "--model_overrides", TINY, "--max_seq_length", 64,
            "--log_steps", 10, "--learning_rate", 0.003, "--warmup_steps", 5, *args]


def predict_here(model_dir, texts):
    tokenizer = load_tokenizer(model_dir)
    model = SujiForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            out.append(str(model(**tokenizer(text, return_tensors="pt", truncation=True, max_length=64)).logits.argmax(-1).item()))
    return out


def test_interleave_restores_example_order():
    # rank r held examples r, r + world, ...: 7 examples over 3 ranks
    assert _interleave([[0, 3, 6], [1, 4], [2, 5]]) == list(range(7))
    assert sum_across_ranks(Counter({("", "tp"): 2})) == Counter({("", "tp"): 2})  # one process: unchanged


def test_train_and_dev_limits_draw_seeded_subsets_after_the_split(tmp_path):
    class Lines(Task):
        def read(self, path):
            return path.read_text(encoding="utf-8").split()

    (tmp_path / "train.txt").write_text(" ".join(str(i) for i in range(100)), encoding="utf-8")
    args = FinetuneArgs(train_file=tmp_path / "train.txt", dev_fraction=0.2, split_seed=3)
    full_train, dev, _ = load_data(Lines(None, args, None), args)
    args.train_limit = 30
    train, same_dev, split = load_data(Lines(None, args, None), args)
    assert same_dev == dev and len(train) == 30 and set(train) < set(full_train)  # dev untouched, no dev row leaks
    assert train == [x for x in full_train if x in set(train)]  # file order kept
    assert "training on 30 of 80 examples" in split
    assert load_data(Lines(None, args, None), args)[0] == train  # the same seed draws the same subset
    args.split_seed = 4
    assert load_data(Lines(None, args, None), args)[0] != train

    class ByParity(Lines):  # a task's own split says how it chose dev
        def split(self, examples):
            self.split_rule = "even numbers as dev"
            return [x for x in examples if int(x) % 2], [x for x in examples if not int(x) % 2]

    assert load_data(ByParity(None, args, None), args)[2].startswith(f"{args.train_file} split even numbers as dev")
    _, full_dev, _ = load_data(Lines(None, args, None), args)
    args.dev_limit = 7
    _, small_dev, split = load_data(Lines(None, args, None), args)
    assert len(small_dev) == 7 and small_dev == [x for x in full_dev if x in set(small_dev)]
    assert "evaluating on 7 of 20 dev examples" in split


def test_without_training_the_held_out_split_is_evaluated(tmp_path):
    class Lines(Task):
        def read(self, path):
            return path.read_text(encoding="utf-8").split()

    (tmp_path / "train.txt").write_text(" ".join(str(i) for i in range(100)), encoding="utf-8")
    args = FinetuneArgs(train_file=tmp_path / "train.txt", dev_fraction=0.2, split_seed=3)
    _, dev, _ = load_data(Lines(None, args, None), args)
    args.do_train = False  # re-scoring a finetuned model: the same 20 held-out examples, nothing to train on
    train, again, split = load_data(Lines(None, args, None), args)
    assert train == [] and again == dev and split.startswith("dev = the held-out part of")
    args.train_file = ""
    assert load_data(Lines(None, args, None), args)[:2] == ([], [])


def test_every_option_has_help_and_bad_choices_stop_at_once():
    from suji_models.training.loop import TrainArgs
    from suji_models.training.options import build_parser

    parser = build_parser((FinetuneArgs, TrainArgs))
    for action in parser._actions:
        if action.dest not in ("help", "local_rank"):
            assert action.help and action.help.strip(), action.dest


def test_two_ranks_train_keep_the_best_and_predict_in_order(tmp_path):
    dev = classify_data(tmp_path)
    out = tmp_path / "run"
    log = ok(*toy("classify", "--train_file", tmp_path / "train.tsv", "--dev_file", tmp_path / "dev.tsv",
                  "--per_device_batch_size", 16, "--epochs", 2, "--output_dir", out))
    results = json.loads((out / "results.json").read_text())
    assert [h["step"] for h in results["history"]] == [10, 20]  # 300 rows / (16 x 2 ranks): 10 steps an epoch
    # the dev counts of both ranks (21 + 20 of 41 examples) were summed: the score equals a one-process recount
    expected = predict_here(out / "best", [text for _, text in dev])
    accuracy = sum(p == label for (label, _), p in zip(dev, expected)) / len(dev)
    assert results["dev"]["total"] == 41 and results["dev"]["accuracy"] == pytest.approx(accuracy)
    assert max(h["accuracy"] for h in results["history"]) == pytest.approx(accuracy)
    assert "summary: dev accuracy" in log and "new best accuracy" in log

    # predict mode, 2 ranks: each predicts its share; the file is in input order
    predictions = tmp_path / "predictions.jsonl"
    ok(*toy("classify", "--do_train", "false", "--model", out / "best", "--predict", tmp_path / "dev.tsv",
            "--predict_output", predictions, "--output_dir", tmp_path / "predict"))
    got = [json.loads(line)["prediction"] for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert got == expected
    code, log = launch(*toy("classify", "--do_train", "false", "--model", out / "best", "--output_dir",
                            tmp_path / "idle"), procs=1)
    assert code != 0 and "nothing to evaluate or predict" in log.strip().splitlines()[-1], log[-2000:]


def test_every_recipe_takes_the_training_tricks(tmp_path):
    """The generic UniLM toy (no trick code of its own) with EMA, ChildTuning-D and FGM next to a head learning
    rate: the EMA's shadow weights are in the resumable checkpoint; R-Drop, which needs one softmax per example,
    is refused in one line."""
    lines = [line.strip()[:6] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if len(line.strip()) >= 6]
    (tmp_path / "train.tsv").write_text("\n".join(f"{s}\t{s}" for s in lines[:64]), encoding="utf-8")
    out = tmp_path / "run"
    common = ["--train_file", tmp_path / "train.tsv", "--per_device_batch_size", 8, "--max_steps", 4]
    ok(*toy("copy", *common, "--save_steps", 2, "--ema", 0.9, "--child_tuning", "d", "--child_tuning_batches", 2,
            "--loss_trick", "fgm", "--head_learning_rate", 0.01, "--output_dir", out), procs=1)
    state = torch.load(out / "checkpoint-2" / "state" / "mp_rank_00_model_states.pt", weights_only=False)
    assert state["trick_state"]["decay"] == 0.9 and state["trick_state"]["shadow"]
    code, log = launch(*toy("copy", *common, "--loss_trick", "rdrop", "--output_dir", tmp_path / "refused"), procs=1)
    assert code != 0 and "rdrop compares the two softmax predictions" in log.strip().splitlines()[-1], log[-2000:]


@pytest.mark.slow
def test_zero3_trains_and_evaluates_in_lockstep(tmp_path):
    classify_data(tmp_path, n_train=120, n_dev=7)  # 4 + 3 dev examples: one rank runs a batch fewer
    out = tmp_path / "run"
    ok(*toy("classify", "--train_file", tmp_path / "train.tsv", "--dev_file", tmp_path / "dev.tsv",
            "--per_device_batch_size", 8, "--eval_batch_size", 2, "--max_steps", 6, "--eval_steps", 3,
            "--zero_stage", 3, "--output_dir", out))
    results = json.loads((out / "results.json").read_text())
    assert [h["step"] for h in results["history"]] == [3, 6] and results["dev"]["total"] == 7


@pytest.mark.slow
def test_generating_task_evaluates_with_generate_and_is_refused_under_zero3(tmp_path):
    lines = [line.strip()[:6] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if len(line.strip()) >= 6]
    pairs = [f"{s}\t{s}" for s in lines[:200]]
    (tmp_path / "train.tsv").write_text("\n".join(pairs), encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("\n".join(pairs[:6]), encoding="utf-8")
    out = tmp_path / "run"
    log = ok(*toy("copy", "--train_file", tmp_path / "train.tsv", "--dev_file", tmp_path / "dev.tsv",
                  "--per_device_batch_size", 16, "--max_steps", 4, "--output_dir", out))
    results = json.loads((out / "results.json").read_text())
    assert "exact" in results["dev"] and [h["step"] for h in results["history"]] == [4]
    code, log = launch(*toy("copy", "--train_file", tmp_path / "train.tsv", "--zero_stage", 3,
                            "--output_dir", tmp_path / "refused"))
    assert code != 0 and "use ZeRO stage 0-2" in log


def test_resumed_on_one_process_keeps_the_global_batch_and_the_epochs_steps(tmp_path):
    """2 ranks stop at step 4; resumed on 1 process the driver doubles the accumulation, so the run still has
    20 steps (2 epochs of 300 rows in 32-row steps) and ends with the same evaluation steps."""
    classify_data(tmp_path)
    out = tmp_path / "run"
    args = toy("classify", "--train_file", tmp_path / "train.tsv", "--dev_file", tmp_path / "dev.tsv",
               "--per_device_batch_size", 16, "--epochs", 2, "--output_dir", out)
    first = ok(*args, "--stop_at_step", 4)
    assert "stopped at step 4" in first
    second = ok(*args, procs=1)
    assert second.count("world size 2 -> 1: gradient accumulation 1 -> 2 keeps the global batch of 32 rows") == 1
    assert "training 20 steps" in second and "resumed from" in second
    results = json.loads((out / "results.json").read_text())
    assert [h["step"] for h in results["history"]] == [10, 20] and results["steps"] == 20
