"""Multi-turn chit-chat (DialoGPT-style) on LCCC, after "动手做个DialoGPT：基于LM的生成式多轮对话模型":
the turns of a dialogue joined with [SEP] into one row, speakers in alternating segment ids, one
left-to-right LM trained on every reply of the dialogue at once (suji_models/tasks/dialogue.py).

    python finetune/dialogue.py --config configs/finetune/dialogue_pretrained.json
    python finetune/dialogue.py --train_file ../shared/data/dialogue/lccc_toy/toy_train.txt \
        --dev_file ../shared/data/dialogue/lccc_toy/toy_valid.txt --model ../shared/models/suji-roformer-small-zh
    deepspeed --num_gpus 8 finetune/dialogue.py --model_preset gpt2-small --tokenizer vocab.txt --train_file ...
    python finetune/dialogue.py --chat --model runs/dialogue/best --top_k 20 --num_candidates 1   # talk to it
    python finetune/dialogue.py --do_train false --model runs/dialogue/best --predict histories.txt

Data: LCCC as CDial-GPT ships it (../shared/data/dialogue/lccc_toy): text files, one dialogue per line,
utterances TAB-separated, characters space-separated (rejoined); or `toy_data.json#train` (multi-turn
JSON splits); several files comma-separated. Histories longer than --max_seq_length are cut from the
oldest turn, never inside a reply (a reply that cannot fit is skipped and counted).

Model: any Suji / transformers checkpoint (--model), including MLM-pretrained encoders (BERT / RoFormer),
which run under a causal mask (--mask causal, the post's design) or a UniLM-style mask (--mask prefix:
the history bidirectional, one reply generated left to right; one row per reply); or a preset
(gpt2-* presets are causal LMs; give them `"type_vocab_size": 2` in --model_overrides to see speakers).

Evaluation on dev (every epoch; the best perplexity is kept): perplexity of the reference replies (every
reply given its history), and for the first --eval_generate dialogues a reply to the last turn's history,
scored by BLEU-2/4 (mean sentence BLEU on characters, NLTK method1 smoothing) against the reference and
by distinct-1/2 over all generated replies. Decoding through transformers' generate(): top-k / top-p
sampling, temperature, repetition penalty, n-gram blocking, --num_candidates replies; --chat streams
each reply token by token and keeps the history (/reset forgets it, /quit or end of input leaves).

Results (dev = toy_valid.txt, 2,000 single-turn LCCC dialogues; train = toy_train.txt + toy_data.json#train,
11,000 dialogues, 1,000 of them multi-turn; 61 oldest turns dropped and 17 context turns cut at length 128;
200 steps of 32 dialogues = 0.58 epoch, AdamW lr 1e-3, 30 warmup steps, linear decay, seed 42, fp32, one CPU
process; generation: top-k 5 sampling as in the post, seed 0, 200 dev replies):

| encoder (RoFormer, 7.3M) | train loss @200 | dev perplexity | BLEU-2 | BLEU-4 | distinct-1 | distinct-2 | reply length |
|---|---|---|---|---|---|---|---|
| random initialization | 5.04 | 122.4 | 2.26 | 1.27 | 2.83 | 10.36 | 5.8 |
| suji-roformer-small-zh (MLM) | 4.73 | 91.6 | 1.98 | 1.12 | 4.95 | 18.89 | 5.1 |

Examples (the three drawn by --examples_seed 0 from the 200 generated dev replies; history -> reply):
- 晓飞帅！！！！！ -> random: 哈哈哈哈哈哈哈哈 | pretrained: 是啊！！！ (reference: 帅，演技超棒)
- 牛我顶多6 -> random: 我也是我也是 | pretrained: 你就不是 (reference: 我也不能一个动作一直这样，会换动作)
- 一边替他开心一边又很难过 -> random: 你也是我也是你的，我也没有 | pretrained: 我也是你也没有 (reference: 是的是的)

BLEU and distinct in %. The pretrained encoder gives a 25% lower reply perplexity and 1.8x the distinct-1/2;
BLEU is tiny and slightly higher for the random row, whose replies are longer and repeat the commonest
characters (BLEU of sampled chit-chat against one reference mostly measures common characters). Measured on
a shared, heavily loaded 2-core CPU (about 85 minutes a run).

- random: `python finetune/dialogue.py --config configs/finetune/dialogue_random.json` (RoFormer of the
  reference encoder's shape: hidden 256, 4 layers, 4 heads, FFN 1024, its 15,861-entry char vocabulary).
- pretrained: `python finetune/dialogue.py --config configs/finetune/dialogue_pretrained.json`
  (../shared/models/suji-roformer-small-zh, an MLM run under the causal mask).
Published figures (CDial-GPT: a GPT-base model pretrained on LCCC) are not comparable: a 7.3M model, 0.58 epoch
of 11k dialogues on CPU is far from them; this table shows the pipeline and the gap between the two rows.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from suji_models.modeling import SujiForCausalLM
from suji_models.tasks import dialogue as D
from suji_models.training.finetune import Task, run
from suji_models.training.options import option, parse_args


@dataclass
class DialogueOptions:
    mask: Literal[D.MASKS] = option("causal", "causal: the whole dialogue is one LM row, loss on every reply "
                                              "(the post); prefix: history bidirectional, one row per reply")
    eval_generate: int = option(200, "dev dialogues whose last turn is generated for BLEU / distinct (-1: all)")
    max_new_tokens: int = option(32, "longest generated reply, in tokens")
    do_sample: bool = option(True, "sample (false: greedy)")
    top_k: int = option(5, "sample among the k most likely tokens (0: no top-k); the post uses top-k 5")
    top_p: float = option(1.0, "nucleus sampling: the smallest set of tokens holding this probability")
    temperature: float = option(1.0, "divide the logits by this before sampling")
    repetition_penalty: float = option(1.0, "CTRL's penalty on tokens already in the context (> 1 repeats less)")
    no_repeat_ngram_size: int = option(0, "never repeat an n-gram of this size (0: off)")
    num_candidates: int = option(1, "replies per history")
    decode_seed: int = option(0, "seed of the sampling during evaluation and prediction")
    examples: int = option(3, "example conversations (history, reference, generated reply) drawn from the "
                              "generated dev replies by --examples_seed, printed and kept in results.json")
    examples_seed: int = option(0, "seed of the draw of example conversations")

    def decoding(self) -> D.DecodingOptions:
        return D.DecodingOptions(self.max_new_tokens, self.do_sample, self.top_k, self.top_p, self.temperature,
                                 self.repetition_penalty, self.no_repeat_ngram_size, self.num_candidates)


class DialogueTask(Task):
    Options = DialogueOptions
    model_class = SujiForCausalLM
    best_metric = "perplexity"
    greater_is_better = False
    generates = True
    defaults = dict(output_dir="runs/dialogue", epochs=1.0, learning_rate=5e-4, max_seq_length=128)

    def read(self, path):
        self.read_stats = getattr(self, "read_stats", Counter())
        return D.read_many(path, self.read_stats)

    def read_predict(self, path):
        return [{"history": h} for h in D.read_histories(path)]

    def describe(self, train, dev):
        self.encode_stats = Counter()
        self.say(f"dialogues: {len(train)} train / {len(dev)} dev; reading: {dict(self.read_stats)}")
        self.notes["reading"] = dict(self.read_stats)

    def configure(self, config, train):
        config.dialogue_mask = self.options.mask  # the checkpoint remembers how its rows were laid out
        return config

    def encode(self, examples):
        rows = D.encode_dialogues(self.tokenizer, examples, self.args.max_seq_length, self.options.mask,
                                  self.encode_stats)
        self.say(f"encoding: {dict(self.encode_stats)}")
        self.notes["encoding"] = dict(self.encode_stats)
        return rows

    def collate(self, rows):
        return D.collate(rows, self.tokenizer.pad_token_id, self.options.mask)

    def predict(self, model, examples, forward):
        import torch

        torch.manual_seed(self.options.decode_seed)
        mask = getattr(model.config, "dialogue_mask", self.options.mask)
        max_length = _model_length(model, self.args.max_seq_length)
        if examples and isinstance(examples[0], dict):  # --predict: reply to whole histories
            replies = D.generate_replies(model, self.tokenizer, [e["history"] for e in examples],
                                         self.options.decoding(), max_length=max_length, mask=mask)
            return [{"replies": r} for r in replies]
        limit = len(examples) if self.options.eval_generate < 0 else self.options.eval_generate
        predictions = D.predict_dialogues(model, self.tokenizer, examples, forward, max_length=max_length, mask=mask,
                                          batch_size=self.args.eval_batch_size, options=self.options.decoding(),
                                          generate_for=-(-limit // _world()))
        self._keep_examples(examples, predictions)
        return predictions

    def _keep_examples(self, dialogues, predictions):
        """A seeded draw (not a hand pick) of generated dev replies, shown next to the reference."""
        generated = [(d, p) for d, p in zip(dialogues, predictions) if p["replies"]]
        drawn = D.sample_examples(generated, self.options.examples, self.options.examples_seed)
        self.notes["examples"] = [{"history": d[:-1], "reference": d[-1], "replies": p["replies"]} for d, p in drawn]
        for example in self.notes["examples"]:
            self.say(f"example: {' / '.join(example['history'])} -> {example['replies'][0]} "
                     f"(reference: {example['reference']})")

    def metric(self, examples, predictions):
        return D.dialogue_counts(examples, predictions)

    def scores(self, counts):
        return D.dialogue_scores(counts)

    def write_predictions(self, path, examples, predictions):
        from suji_models.tasks.output import write_jsonl

        return write_jsonl(path, ({"history": e["history"], "replies": p["replies"]}
                                  for e, p in zip(examples, predictions)))


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def _model_length(model, wanted: int) -> int:
    if model.config.position_embedding_type == "learned":
        return min(wanted, model.config.max_position_embeddings)
    return wanted


@dataclass
class ChatArgs:
    model: str = option("", "a finetuned dialogue checkpoint (OUTPUT_DIR/best)")
    tokenizer: str = option("", "tokenizer (default: the --model folder)")
    max_seq_length: int = option(128, "history + reply, in tokens (the history is cut from its oldest turn)")
    seed: int = option(0, "sampling seed")


def chat(argv) -> int:
    """`--chat`: read lines from stdin, stream replies to stdout, keep the history."""
    import torch

    from tokenization import load_tokenizer

    chat_args, options = parse_args((ChatArgs, DialogueOptions), argv)
    if not chat_args.model:
        raise SystemExit("--chat needs --model (a finetuned dialogue checkpoint)")
    torch.manual_seed(chat_args.seed)
    tokenizer = load_tokenizer(chat_args.tokenizer or chat_args.model)
    model = SujiForCausalLM.from_pretrained(chat_args.model).eval()
    session = D.ChatSession(model, tokenizer, options.decoding(), _model_length(model, chat_args.max_seq_length),
                            getattr(model.config, "dialogue_mask", options.mask))
    replies = D.chat_loop(session, sys.stdin, sys.stdout)
    print(f"({replies} replies)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--chat" in argv:
        argv.remove("--chat")
        sys.exit(chat(argv))
    run(DialogueTask)
