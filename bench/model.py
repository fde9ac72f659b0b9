"""Forward+backward speed and peak memory: Suji vs transformers, same config and same weights.

    python bench/model.py                 # CPU, small model, fp32
    python bench/model.py --size base     # BERT-base shapes (GPU: bf16)

Each row is measured in a fresh subprocess (clean peak memory), on random token ids with padding-free
batches; tokens/s counts every token (no padding). Ratios are against transformers' model of the same
family measured in the same run. Rows:
- BertForMaskedLM / RoFormerForMaskedLM (transformers, SDPA attention) — the references;
- SujiForMaskedLM with the same weights (imported with from_pretrained);
- Suji with the MLM head on the 15% masked positions only (what pretraining runs);
- Suji's attention variants (RealFormer residual scores, entropy-invariant scale) to show their cost.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time

SIZES = {
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def _measure(spec: dict, queue):
    import torch
    import transformers

    import suji_models as S

    torch.manual_seed(0)
    torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape = dict(SIZES[spec["size"]], vocab_size=21128, max_position_embeddings=max(512, spec["seq"]))
    family = spec["family"]
    hf_config = (transformers.BertConfig if family == "bert" else transformers.RoFormerConfig)(**shape)
    hf_model = (transformers.BertForMaskedLM if family == "bert" else transformers.RoFormerForMaskedLM)(hf_config)
    if spec["impl"] == "transformers":
        model = hf_model
    else:
        with tempfile.TemporaryDirectory() as tmp:
            hf_model.save_pretrained(tmp)
            model = S.SujiForMaskedLM.from_pretrained(tmp)
        for flag in spec.get("variant", []):
            setattr(model.config, flag, True)
        del hf_model
    model.to(device=device, dtype=dtype).train()
    params = [p for p in model.parameters() if p.requires_grad]
    batch, seq = spec["batch"], spec["seq"]
    ids = torch.randint(5, 21128, (batch, seq), device=device)
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(batch, seq, device=device) < 0.15
    labels[chosen] = ids[chosen]
    extra = {"masked_logits_only": True} if spec.get("masked_only") else {}

    def step():
        loss = model(input_ids=ids, labels=labels, **extra).loss
        loss.backward()
        for p in params:
            p.grad = None

    for _ in range(spec["warmup"]):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(spec["iters"]):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"tokens_per_s": batch * seq / statistics.median(times), "peak_mb": peak / 2**20, "device": device,
               "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu"})


def measure(spec):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(spec, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--seqs", default="128,512")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    rows = []
    for seq in map(int, args.seqs.split(",")):
        for family in ("bert", "roformer"):
            base = dict(size=args.size, seq=seq, batch=args.batch, iters=args.iters, warmup=args.warmup,
                        threads=args.threads, family=family)
            runs = [("transformers", dict(impl="transformers")), ("suji", dict(impl="suji")),
                    ("suji, masked-only head", dict(impl="suji", masked_only=True)),
                    ("suji + RealFormer", dict(impl="suji", variant=["residual_attention"])),
                    ("suji + entropy scale", dict(impl="suji", variant=["entropy_invariant_scale"]))]
            reference = None
            for name, spec in runs:
                result = measure({**base, **spec})
                reference = reference or result
                rows.append({"seq": seq, "family": family, "model": name, **result,
                             "speed_ratio": result["tokens_per_s"] / reference["tokens_per_s"],
                             "memory_ratio": result["peak_mb"] / reference["peak_mb"]})
                print(f"seq {seq:4d} {family:8s} {name:24s} {result['tokens_per_s']:10.0f} tok/s "
                      f"x{rows[-1]['speed_ratio']:.2f}  peak {result['peak_mb']:8.0f} MB x{rows[-1]['memory_ratio']:.2f}",
                      file=sys.stderr, flush=True)
    device = rows[0]["device_name"]
    print(f"\n{args.size} model, batch {args.batch}, {'bf16' if rows[0]['device'] == 'cuda' else 'fp32'} on {device}; "
          "ratios vs transformers in the same run (speed: higher is better; memory: peak "
          f"{'GPU allocated' if rows[0]['device'] == 'cuda' else 'process RSS'}, lower is better)\n")
    print("| seq | family | model | tokens/s ratio | peak memory ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seq']} | {r['family']} | {r['model']} | {r['speed_ratio']:.2f}x | {r['memory_ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
