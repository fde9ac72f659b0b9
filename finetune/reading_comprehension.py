"""Reading comprehension (extractive QA): the span baseline, UniLM seq2seq and MLM answers.

    python finetune/reading_comprehension.py --config configs/finetune/mrc_span_pretrained.json   # a results row
    python finetune/reading_comprehension.py --method seq2seq --train_file ../shared/data/mrc/cmrc2018/cmrc2018_dev.json \
        --model ../shared/models/suji-roformer-small-zh --output_dir runs/mrc_seq2seq
    python finetune/reading_comprehension.py --method span --do_train false --model runs/mrc_span/best \
        --predict questions.jsonl            # {id, question, context} lines or SQuAD JSON

Methods (--method; the library is suji_models.tasks.mrc, the decoding constraints suji_models.generation):
- span: [CLS] question [SEP] passage [SEP], start/end logits, the best span of at most
  --max_answer_tokens tokens, mapped back to the passage's characters through the tokenizer offsets.
- seq2seq ("万能的seq2seq：基于seq2seq的阅读理解问答"): UniLM on [CLS] passage [SEP] question [SEP] answer
  [SEP], loss on the answer; transformers' generate() (greedy, or --num_beams) where every next token must
  keep the answer a substring of the passage, [SEP] first means "no answer", and the windows / passages of
  a question vote on each token (--vote mean: the post's average; squared: the bert4keras example's).
- mlm ("“非自回归”也不差：基于MLM的阅读理解问答"): [CLS] [MASK]*A [SEP] question [SEP] passage [SEP]; the A
  = --max_answer_tokens slots are filled in one forward pass (the answer, [SEP], then empty slots that are not
  trained), read left to right under the same passage constraint; windows / passages vote with
  sum(s^2) / (sum(s) + 1). With --always_answer (default; every CMRC2018 question has an answer) a question
  whose windows all say "no answer" is answered anyway (seq2seq and mlm; span always answers).
Passages longer than a row are read in overlapping windows (--overlap) at training and prediction.

Data: --train_file in SQuAD JSON (CMRC2018), DuReader 2.0 JSON lines, or {id, question, context, answers}
lines (--format auto detects). Without --dev_file the train file is split BY PASSAGE (SQuAD: every question
of a passage on the same side; DuReader: by question) with --dev_fraction / --split_seed. Bad input
(answer_start that does not match the passage, answers not in the passage, empty questions) is counted and
printed with file and question id; answers that cannot be located are still scored. Metric: the official
CMRC2018 EM and F1 (character-level longest common substring, punctuation stripped, max over references).
Output: OUTPUT_DIR/best, results.json (dev EM / F1 and answers/s), with --predict FILE a JSONL of
{id, answer} and the official prediction JSON {id: answer} (same name, .json).

Results: ../shared/data/mrc/cmrc2018/cmrc2018_dev.json (the only CMRC2018 split here: 3,219 questions on 848
passages) split by passage with --dev_fraction 0.05 --split_seed 0: 3,053 train questions on 806 passages, 166 dev
questions on 42 passages. Dev EM / F1 (official CMRC2018 metric, %) and answers per second of one process:

| method  | encoder                                   | EM   | F1   | answers/s | config                                     |
|---------|-------------------------------------------|------|------|-----------|--------------------------------------------|
| span    | random initialization                     | 2.41 | 9.36 | 1.00      | configs/finetune/mrc_span_random.json      |
| span    | ../shared/models/suji-roformer-small-zh   | 2.41 | 8.08 | 1.03      | configs/finetune/mrc_span_pretrained.json  |
| seq2seq | random initialization                     | 0.00 | 1.98 | 0.88      | configs/finetune/mrc_seq2seq_random.json   |
| seq2seq | ../shared/models/suji-roformer-small-zh   | 0.00 | 1.77 | 0.77      | configs/finetune/mrc_seq2seq_pretrained.json |
| mlm     | random initialization                     | 0.00 | 0.73 | 1.93      | configs/finetune/mrc_mlm_random.json       |
| mlm     | ../shared/models/suji-roformer-small-zh   | 0.00 | 2.54 | 0.39      | configs/finetune/mrc_mlm_pretrained.json   |
| span    | published: BERT-base, CMRC2018 dev        | 65.5 | 84.5 |           |                                            |

Each row: `python finetune/reading_comprehension.py --config CONFIG` (one process, fp32, seed 42): rows of 256
tokens (question <= 32, answer <= 32 tokens, windows overlapping by 64 tokens, 10% of the answer-less training
windows kept), batch 16, only 80 steps (~0.3 epoch; lr 3e-4 pretrained / 1e-3 random, 8 warmup steps, linear
decay). These are far from trained models: the machine (2 vCPUs shared by six concurrent jobs, load 20-40) gave
each run ~100-240 tokens/s, so a run took ~30 minutes for 80 steps; the final losses (span 3.96, seq2seq 5.85,
mlm 6.32 for the pretrained encoder) are still falling. At this budget the pretrained encoder shows no gain:
the random rows (trained with the higher learning rate) score as high, and with 166 dev questions (one question
is 0.6 F1 points) differences of a point or two are noise. The generative methods must learn to produce the
answer's tokens and lag the span model most; the published BERT-base figure (65.5 / 84.5) is
for a 100M-parameter encoder trained to convergence. Answers/s were measured under that same load, all three
pretrained runs side by side (seq2seq: greedy generate() with the KV cache; mlm: one forward pass, then the
slot reading in Python); they order the methods only roughly. bert4keras reports 0.77 (seq2seq) and 0.774 (MLM)
on WebQA + SogouQA, which are not available here.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from suji_models.tasks.mrc import (
    METHODS, MrcLayout, MrcReport, collate_rows, encode_rows, model_class_for, mrc_counts, mrc_scores,
    passage_windows, predict_mlm, predict_seq2seq, predict_span, read_mrc,
)
from suji_models.tasks.output import write_jsonl
from suji_models.tasks.readers import split_by_group
from suji_models.training.finetune import Task, run
from suji_models.training.options import option


@dataclass
class MrcOptions:
    method: Literal[METHODS] = option("span", "span (extractive baseline), seq2seq (UniLM) or mlm (answer slots)")
    format: Literal["auto", "squad", "dureader", "jsonl"] = option("auto", "data format of the train / dev files")
    max_question_tokens: int = option(64, "question tokens kept (the rest is cut)")
    max_answer_tokens: int = option(32, "longest answer: span length limit, MLM slots, seq2seq new tokens")
    overlap: int = option(64, "passage tokens shared by neighbouring windows")
    no_answer_windows: float = option(1.0, "share of the training windows without the answer that are kept "
                                           "(they teach 'not here'; fewer is faster)")
    eval_max_length: int = option(0, "row length at evaluation / prediction (0: --max_seq_length)")
    num_beams: int = option(1, "seq2seq: beams of generate()")
    vote: Literal["mean", "squared"] = option("mean", "seq2seq: how windows / passages vote on each next token")
    always_answer: bool = option(True, "every question has an answer (CMRC2018): when all windows / passages say "
                                       "'no answer', answer anyway (false: DuReader-style empty answers)")


class ReadingComprehension(Task):
    Options = MrcOptions
    best_metric = "f1"
    # The driver reads this before the options exist; only --method seq2seq generates, but ZeRO-3 is
    # refused for all three rather than let a seq2seq run hang in unsynchronized decoding.
    generates = True
    defaults = dict(output_dir="runs/mrc", epochs=2.0, learning_rate=1e-4, max_seq_length=256)

    def __init__(self, options, args, tokenizer, say=print):
        super().__init__(options, args, tokenizer, say)
        self.model_class = model_class_for(options.method)
        self.report = MrcReport()

    def layout(self, max_length: int) -> MrcLayout:
        o = self.options
        return MrcLayout(o.method, max_length, o.max_question_tokens, o.max_answer_tokens)

    # ---- data ----------------------------------------------------------------------------------
    def read(self, path):
        return read_mrc(path, self.options.format, self.report)

    def read_predict(self, path):
        return read_mrc(path, "auto", self.report)

    def split(self, examples):
        a = self.args
        self.split_rule = f"{1 - a.dev_fraction:.0%}/{a.dev_fraction:.0%} by passage (seed {a.split_seed})"
        return split_by_group(examples, lambda ex: ex.group, self.args.dev_fraction, self.args.split_seed)

    def describe(self, train, dev):
        self.say(f"{self.report.summary()}")
        self.notes["input_report"] = dict(self.report.counts)
        self.notes["passages"] = {"train": len({ex.group for ex in train}), "dev": len({ex.group for ex in dev})}

    def _rows(self, examples, layout, with_target, report=None):
        questions = [self.tokenizer(ex.question, add_special_tokens=False)["input_ids"][:layout.max_question_tokens]
                     for ex in examples]
        windows = passage_windows(self.tokenizer, examples, layout.room, self.options.overlap)
        return windows, encode_rows(self.tokenizer, layout, examples, windows, questions, with_target, report)

    def encode(self, examples):
        trainable = [ex for ex in examples if ex.has_answer]
        for ex in examples:
            if not ex.has_answer:
                self.report.add("question without a located answer (not trained on)", ex.id)
        report = MrcReport()
        windows, rows = self._rows(trainable, self.layout(self.args.max_seq_length), True, report)
        rng = random.Random(self.args.split_seed)  # the loop's --seed is not visible to a task
        kept = [r for r in rows if windows[r["window"]].answer or rng.random() < self.options.no_answer_windows]
        for r in kept:
            del r["window"]
            r.pop("passage_start", None)
        with_answer = sum(1 for w in windows if w.answer)
        self.say(f"training rows: {len(kept)} of {len(rows)} windows ({with_answer} hold the answer); "
                 f"{report.summary()}")
        self.notes["training_windows"] = {"rows": len(kept), "windows": len(rows), "with_answer": with_answer,
                                          **dict(report.counts)}
        return kept

    def collate(self, rows):
        batch = collate_rows(rows, self.options.method, self.tokenizer.pad_token_id, self.options.max_answer_tokens)
        if self.options.method == "mlm":
            batch["masked_logits_only"] = True  # the vocabulary projection only on the answer slots
        return batch

    # ---- evaluation and prediction -------------------------------------------------------------
    def predict(self, model, examples, forward):
        o, started = self.options, time.perf_counter()
        layout = self.layout(o.eval_max_length or self.args.max_seq_length)
        windows, rows = self._rows(examples, layout, False)
        size = self.args.eval_batch_size
        if o.method == "span":
            answers = predict_span(forward, examples, windows, rows, self.tokenizer.pad_token_id, size,
                                   o.max_answer_tokens)
        elif o.method == "mlm":
            answers = predict_mlm(forward, examples, windows, rows, self.tokenizer, o.max_answer_tokens, size,
                                  always_answer=o.always_answer)
        else:
            answers = predict_seq2seq(model, examples, windows, rows, self.tokenizer, o.max_answer_tokens, size,
                                      o.num_beams, o.vote, always_answer=o.always_answer)
        self.predict_seconds = time.perf_counter() - started
        return answers

    def metric(self, examples, predictions):
        counts = mrc_counts([ex.references for ex in examples], predictions)
        counts["seconds"] = getattr(self, "predict_seconds", 0.0)
        return counts

    def scores(self, counts):
        scores = mrc_scores(counts)
        scores["answers_per_second"] = counts["questions"] / counts["seconds"] if counts["seconds"] else 0.0
        return scores

    def write_predictions(self, path, examples, predictions):
        path = write_jsonl(path, ({"id": ex.id, "answer": a} for ex, a in zip(examples, predictions, strict=True)))
        official = Path(path).with_suffix(".json")
        official.write_text(json.dumps({ex.id: a for ex, a in zip(examples, predictions)}, ensure_ascii=False,
                                       indent=1), encoding="utf-8")
        self.say(f"official prediction JSON: {official}")
        return path


if __name__ == "__main__":
    run(ReadingComprehension)
