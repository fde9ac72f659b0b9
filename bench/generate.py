"""Generation speed: Suji's `generate()` vs transformers' `GPT2LMHeadModel.generate`, same weights.

    python bench/generate.py                  # CPU, small GPT2 (hidden 256 x 4 layers, vocab 21128), fp32
    python bench/generate.py --size base      # GPT2-small shape (768 x 12); on a GPU also bf16

A random `GPT2LMHeadModel` is saved once and imported into `SujiForCausalLM` (the same weights); each side
loads its own format. For every decoding (greedy; top-p 0.9 sampling), batch (1, 16) and prompt length
(64, 256 random tokens, no padding) both models generate exactly `--new_tokens` tokens (end-of-text
disabled, `min_new_tokens` = `max_new_tokens`) with the KV cache on. New tokens/s = batch x new tokens /
seconds of the whole `generate()` call (prefill included; `--clock process`: CPU seconds of the process),
best of `--iters` calls after `--warmup`, best over `--rounds` passes that alternate which model goes first
(both models live in one process, so the pair is measured under the same load). Ratios are Suji /
transformers in the same run. Greedy rows also say whether both produced the same tokens.
Measured tables: README.md (Benchmarks).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time

from _common import pick  # bench/ is on the path of a bench script

SIZES = {
    "tiny": dict(n_embd=32, n_layer=2, n_head=4, n_inner=64, vocab_size=1000),
    "small": dict(n_embd=256, n_layer=4, n_head=4, n_inner=1024, vocab_size=21128),
    "base": dict(n_embd=768, n_layer=12, n_head=12, n_inner=3072, vocab_size=21128),
}
DECODINGS = {"greedy": dict(do_sample=False), "top-p": dict(do_sample=True, top_p=0.9, top_k=0, temperature=1.0)}


def build_models(size: str, positions: int, directory: str, device, dtype):
    import torch
    import transformers

    import suji_models as S

    torch.manual_seed(0)
    config = transformers.GPT2Config(**SIZES[size], n_positions=positions, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    S.SujiForCausalLM.from_pretrained(directory).save_pretrained(f"{directory}/suji")
    reference = transformers.GPT2LMHeadModel.from_pretrained(directory, dtype=dtype).to(device).eval()
    suji = S.SujiForCausalLM.from_pretrained(f"{directory}/suji", dtype=dtype).to(device).eval()
    return {"transformers": reference, "suji": suji}


def time_generate(model, ids, new_tokens: int, decoding: dict, seed: int, device, clock=time.perf_counter):
    import torch

    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0, use_cache=True,
                             **decoding)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start, out[:, ids.shape[1]:].tolist()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompts", default="64,256")
    parser.add_argument("--decodings", default="greedy,top-p")
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="passes alternating which model goes first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="process: CPU seconds of this process (with --threads 1, robust on a shared, "
                             "overloaded CPU machine where wall time mostly measures waiting)")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    clock = time.process_time if args.clock == "process" else time.perf_counter

    import torch

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16}[args.dtype]
    decodings = pick(args.decodings, list(DECODINGS), "decodings")
    batches, prompts = [int(b) for b in args.batches.split(",")], [int(p) for p in args.prompts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        models = build_models(args.size, max(prompts) + args.new_tokens, directory, device, dtype)
        vocab = SIZES[args.size]["vocab_size"]
        for name, batch, prompt in itertools.product(decodings, batches, prompts):
            ids = torch.randint(5, vocab, (batch, prompt), generator=torch.Generator().manual_seed(prompt + batch))
            ids = ids.to(device)
            best, outputs = {}, {}
            for round_ in range(args.rounds):
                order = ["transformers", "suji"] if round_ % 2 == 0 else ["suji", "transformers"]
                for impl in order:
                    for i in range(args.warmup + args.iters):
                        seconds, tokens = time_generate(models[impl], ids, args.new_tokens, DECODINGS[name], i, device,
                                                      clock)
                        if i >= args.warmup:
                            best[impl] = min(best.get(impl, float("inf")), seconds)
                        outputs[impl] = tokens
                    print(f"{name:6s} batch {batch:2d} prompt {prompt:3d} {impl:12s} "
                          f"{batch * args.new_tokens / best[impl]:9.1f} new tok/s", file=sys.stderr, flush=True)
            same = outputs["suji"] == outputs["transformers"] if name == "greedy" else None
            for impl in ("transformers", "suji"):
                rows.append({"decoding": name, "batch": batch, "prompt": prompt, "model": impl,
                             "tokens_per_s": batch * args.new_tokens / best[impl],
                             "ratio": best["transformers"] / best[impl], "same_tokens": same})
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"\n{args.size} GPT2 shape, {args.new_tokens} new tokens, KV cache on, "
          f"{str(dtype).replace('torch.', '')} on {where}, {args.threads} threads, {args.clock} clock; "
          "ratio = new tokens/s vs transformers in the same run (higher is better)\n")
    print("| decoding | batch | prompt | model | new tokens/s | ratio | same tokens (greedy) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        same = "" if r["same_tokens"] is None else ("yes" if r["same_tokens"] else "NO")
        print(f"| {r['decoding']} | {r['batch']} | {r['prompt']} | {r['model']} | {r['tokens_per_s']:.1f} "
              f"| {r['ratio']:.2f}x | {same} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
