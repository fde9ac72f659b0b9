"""End-to-end MLM pretraining throughput: Suji's `pretrain/run_mlm.py` vs the HF Trainer stack, one run.

    python bench/pretrain.py                  # CPU: hidden 256 x 4 layers, seq 128, batch 16, 30 steps
    python bench/pretrain.py --size base      # BERT-base, seq 512, batch 32 (GPU: bf16, MFU)
    python bench/pretrain.py --runs hf,suji   # only some rows (see RUNS)

Same corpus (CLUECorpusSmall sample, `--train_file`), same tokenizer (a char vocabulary built from the corpus,
padded with [unused] entries to bert-base-chinese's 21128 so the MLM head costs what it costs in practice), same
initial weights (one random BertForMaskedLM saved once; Suji imports it with `--model`), same batch size,
sequence length and number of steps, one process each with the same thread count, rjieba whole-word masking on
both sides. Every row is a fresh subprocess.

- `hf`: the stack a user would pick: `transformers.Trainer` + `BertForMaskedLM`, one document per row (truncated
  to the max length, padded per batch) and `DataCollatorForLanguageModeling(whole_word_mask=True)` (transformers
  5 folded `DataCollatorForWholeWordMask` into it; it finds words from `offset_mapping`, so the jieba words are
  handed over as offsets by `tokenization.collator_offsets`).
- `hf+suji-model`: the same Trainer and data with `SujiForMaskedLM` (same weights, full-vocab head).
- `hf+suji-masked-head`: the same, with the LM head on masked positions only (`masked_logits_only`).
- `suji`: `pretrain/run_mlm.py` as a user runs it: packed rows, per-document attention, masked-only head.
- `suji-no-docmask`: `run_mlm.py --packing_mask false` (rows still packed; attention crosses documents).
- `suji-foreach-adamw`: `run_mlm.py --fused_adamw false` (the multi-tensor AdamW instead of the fused kernel that
  both `run_mlm.py` and the Trainer use by default).

Throughput = non-pad tokens trained on per second of training steps (batch building included, data preparation
and saving excluded), after the first `--log_steps` steps. For `suji` it is the time-weighted mean of the
`tokens/s` the loop prints per log window after the first; for the HF rows a TrainerCallback times the steps and
the collator counts the tokens. MFU (GPU only) uses the loop's formula 6N + 12*L*s*d per token for every row.

Measured tables: README.md, section Benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cuda_available, free_port, pick  # bench/ is on the path of a bench script

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "data" / "corpus" / "clue_corpus_small" / "CLUECorpusSmall_sampled.txt"

SIZES = {  # model shape, and the run defaults for that size
    "small": dict(model=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
                  seq=128, batch=16, steps=30, log_steps=5),
    "base": dict(model=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                 seq=512, batch=32, steps=100, log_steps=20),
}
RUNS = {
    "hf": "HF Trainer + BertForMaskedLM (line by line, WWM collator)",
    "hf+suji-model": "HF Trainer + SujiForMaskedLM, full head",
    "hf+suji-masked-head": "HF Trainer + SujiForMaskedLM, masked-only head",
    "suji": "Suji run_mlm.py (packing, doc mask, masked-only head)",
    "suji-no-docmask": "Suji run_mlm.py --packing_mask false",
    "suji-foreach-adamw": "Suji run_mlm.py --fused_adamw false",
}
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu"}



def prepare(args, work: Path):
    """vocab.txt (corpus chars padded to --vocab_size) and one random BertForMaskedLM both sides start from."""
    import torch
    import transformers

    from tokenization import build_char_vocab, load_tokenizer, write_vocab

    tokens = build_char_vocab([args.train_file], vocab_size=args.vocab_size)
    tokens += [f"[unused{i}]" for i in range(100, 100 + args.vocab_size - len(tokens))]
    write_vocab(tokens, work / "vocab.txt")
    tokenizer = load_tokenizer(work / "vocab.txt")
    torch.manual_seed(0)
    config = transformers.BertConfig(**SIZES[args.size]["model"], vocab_size=len(tokenizer),
                                     max_position_embeddings=max(512, args.seq), pad_token_id=tokenizer.pad_token_id)
    transformers.BertForMaskedLM(config).save_pretrained(work / "init")
    return len(tokenizer)


# ---- HF side (runs in its own subprocess: `bench/pretrain.py --hf_worker SPEC.json`) -------------------------

def hf_worker(spec: dict):
    import torch
    import transformers
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    import suji_models as S
    from tokenization import collator_offsets, load_tokenizer, word_boundaries

    torch.set_num_threads(spec["threads"])
    cuda = torch.cuda.is_available()
    tokenizer = load_tokenizer(spec["vocab"])
    texts = [line.strip() for line in open(spec["train_file"], encoding="utf-8") if line.strip()]
    encoded = word_boundaries(texts, tokenizer, segmenter="rjieba")  # the same jieba words Suji masks
    rows, keep = [], spec["seq"] - 2
    for ids, words in zip(encoded["input_ids"], encoded["word_ids"]):
        if not ids:
            continue
        ids = [tokenizer.cls_token_id, *ids[:keep], tokenizer.sep_token_id]
        words = [-1, *words[:keep], -1]
        rows.append({"input_ids": ids, "special_tokens_mask": [1] + [0] * (len(ids) - 2) + [1],
                     "offset_mapping": collator_offsets(words)})

    wwm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, whole_word_mask=True)
    counts = []  # (non-pad tokens, padded tokens) of every batch, in order

    def collate(examples):
        width = max(len(e["input_ids"]) for e in examples)  # tokenizer.pad does not pad offsets: do it here
        examples = [{**e, "offset_mapping": e["offset_mapping"] + [(0, 0)] * (width - len(e["input_ids"]))}
                    for e in examples]
        batch = wwm(examples)
        counts.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        if spec["masked_head"]:
            batch["masked_logits_only"] = True
        return batch

    if spec["model"] == "suji":
        model = S.SujiForMaskedLM.from_pretrained(spec["init"])
    else:
        model = transformers.BertForMaskedLM.from_pretrained(spec["init"])
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    training = TrainingArguments(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch"], max_steps=spec["steps"],
        learning_rate=5e-4, warmup_steps=spec["log_steps"], weight_decay=0.01, adam_beta2=0.98, adam_epsilon=1e-6,
        max_grad_norm=1.0, seed=42, logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=not cuda, bf16=cuda, dataloader_num_workers=0, remove_unused_columns=False)
    Trainer(model=model, args=training, train_dataset=rows, data_collator=collate, callbacks=[Clock()]).train()
    w, n = spec["log_steps"], spec["steps"]
    tokens = sum(c[0] for c in counts[w:n])
    print("RESULT " + json.dumps({
        "tokens_per_s": tokens / (stamps[n - 1] - stamps[w - 1]),
        "padding": 1 - sum(c[0] for c in counts[:n]) / sum(c[1] for c in counts[:n]),
        "step_s": (stamps[n - 1] - stamps[w - 1]) / (n - w)}), flush=True)


def run_hf(name, args, work: Path, env):
    spec = dict(vocab=str(work / "vocab.txt"), init=str(work / "init"), train_file=args.train_file, seq=args.seq,
                batch=args.batch, steps=args.steps, log_steps=args.log_steps, threads=args.threads,
                output_dir=str(work / name), model="bert" if name == "hf" else "suji",
                masked_head=name == "hf+suji-masked-head")
    out = subprocess.run([sys.executable, __file__, "--hf_worker", json.dumps(spec)], cwd=REPO, env=env,
                         capture_output=True, text=True)
    found = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if out.returncode or not found:
        raise SystemExit(f"{name} failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}")
    return json.loads(found.group(1))


# ---- Suji side: pretrain/run_mlm.py as a user runs it, one process without a launcher ----------------------

def run_suji(name, args, work: Path, env):
    command = [sys.executable, "pretrain/run_mlm.py", "--train_file", args.train_file,
               "--tokenizer", str(work / "vocab.txt"), "--model", str(work / "init"),
               "--max_seq_length", str(args.seq), "--per_device_batch_size", str(args.batch),
               "--max_steps", str(args.steps), "--log_steps", str(args.log_steps),
               "--warmup_steps", str(args.log_steps), "--learning_rate", "5e-4", "--seed", "42",
               "--output_dir", str(work / name)]
    if name == "suji-no-docmask":
        command += ["--packing_mask", "false"]
    if name == "suji-foreach-adamw":
        command += ["--fused_adamw", "false"]
    env = {**env, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    windows, log, last = [], [], None  # (rate, seconds) per log window, timed by when its line arrives
    for line in proc.stdout:
        now = time.perf_counter()
        log.append(line)
        if (rate := re.search(r"^step\s+\d+ \|.*tokens/s ([\d.e+]+)", line)) is not None:
            if last is not None:  # the first window (engine warm-up) is left out
                windows.append((float(rate.group(1)), now - last))
            last = now
    proc.wait()
    text = "".join(log)
    padding = re.search(r"padding ([\d.]+)% at length", text)
    if proc.returncode or not windows or padding is None:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{text[-4000:]}")
    seconds = sum(s for _, s in windows)
    rate = sum(r * s for r, s in windows) / seconds
    return {"tokens_per_s": rate, "padding": float(padding.group(1)) / 100,
            "step_s": seconds / (args.steps - args.log_steps)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--train_file", default=str(CORPUS))
    parser.add_argument("--seq", type=int, help="sequence length (default: by size)")
    parser.add_argument("--batch", type=int, help="per-step batch size (default: by size)")
    parser.add_argument("--steps", type=int, help="training steps per run (default: by size)")
    parser.add_argument("--log_steps", type=int, help="warm-up steps left out of the timing (default: by size)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--vocab_size", type=int, default=21128, help="vocab padded to this size (bert-base-chinese)")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ", ".join(RUNS))
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--hf_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hf_worker:
        return hf_worker(json.loads(args.hf_worker))
    for key in ("seq", "batch", "steps", "log_steps"):
        if getattr(args, key) is None:
            setattr(args, key, SIZES[args.size][key])
    if args.steps <= args.log_steps:
        raise SystemExit("--steps must be larger than --log_steps (the warm-up left out of the timing)")
    runs = pick(args.runs, RUNS, "runs")
    import torch

    cuda = cuda_available()
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": str(args.threads)}
    if cuda:
        env.pop("DS_ACCELERATOR")
    work = Path(tempfile.mkdtemp(prefix="suji-bench-pretrain-"))
    rows = []
    try:
        vocab = prepare(args, work)
        from suji_models import SujiConfig
        from suji_models.training.pretrain import flops_per_token

        shape = SujiConfig(**SIZES[args.size]["model"], vocab_size=vocab)
        per_token = flops_per_token(shape, args.seq)
        peak = None
        if cuda:
            from suji_models.training.loop import peak_flops

            peak = peak_flops()
        for name in runs:
            started = time.time()
            result = (run_suji if name.startswith("suji") else run_hf)(name, args, work, env)
            result.update(run=name, wall_s=time.time() - started)
            if peak:
                result["mfu"] = per_token * result["tokens_per_s"] / peak
            rows.append(result)
            print(f"{name:22s} {result['tokens_per_s']:10.0f} tok/s  padding {result['padding']:6.1%}  "
                  f"{result['step_s']:.3f} s/step  ({result['wall_s']:.0f}s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reference = next((r for r in rows if r["run"] == "hf"), rows[0])
    device = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} threads"
    print(f"\n{args.size} model ({SIZES[args.size]['model']['hidden_size']} hidden x "
          f"{SIZES[args.size]['model']['num_hidden_layers']} layers, vocab {vocab}), seq {args.seq}, batch {args.batch}, "
          f"{args.steps} steps ({args.log_steps} warm-up left out), {'bf16' if cuda else 'fp32'} on {device}; "
          f"tokens/s of non-pad tokens, ratio vs `{reference['run']}` in the same run\n")
    mfu = "| MFU " if cuda else ""
    print(f"| run | tokens/s | ratio | padding | s/step {mfu}|")
    print("|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in rows:
        extra = f"| {r['mfu']:.1%} " if cuda else ""
        print(f"| {RUNS[r['run']]} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / reference['tokens_per_s']:.2f}x "
              f"| {r['padding']:.1%} | {r['step_s']:.3f} {extra}|")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
