"""Forward+backward speed and peak memory: Suji vs transformers, same config and same weights.

    python bench/model.py                 # CPU, small model (hidden 256 x 4 layers, vocab 21128), fp32
    python bench/model.py --size base     # BERT-base shapes (GPU: bf16)

Each row is measured in a fresh subprocess (clean peak memory), on random token ids with padding-free
batches; tokens/s counts every token (no padding) and takes the fastest of `--iters` steps after `--warmup`
(contention on a shared machine only ever adds time), best over `--rounds` passes that alternate the row order. Peak memory is over the timed steps: GPU
`max_memory_allocated`, CPU peak RSS (VmHWM, reset before the timed steps). The parent saves one random
transformers model per family and its Suji import; every row loads its own format, so no row pays for building or
converting the other's model. Ratios are against transformers' model of the same family in the same run. Rows:
- BertForMaskedLM (SDPA attention) / RoFormerForMaskedLM (eager: transformers has no SDPA path for it) — the
  references;
- SujiForMaskedLM with the same weights, LM head on every position (the like-for-like comparison);
- Suji with the MLM head on the 15% masked positions only (what pretraining runs);
- Suji's attention variants (RealFormer residual scores, entropy-invariant scale) to show their cost.

Measured tables: README.md, section Benchmarks.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import sys
import tempfile
import time
from queue import Empty

SIZES = {
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def _peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


def _reset_peak_rss():
    """Linux: restart the process's peak-RSS counter (VmHWM) at the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _save_reference(family: str, size: str, seq: int, directory: str):
    """One random transformers model per family, saved once, and its Suji import saved natively (in
    `directory/suji`): every row loads the same weights from its own format, so no process's peak includes
    building or converting the other's model (an import from transformers retains ~120 MB of heap)."""
    import torch
    import transformers

    import suji_models as S

    torch.manual_seed(0)
    shape = dict(SIZES[size], vocab_size=21128, max_position_embeddings=max(512, seq))
    hf_config = (transformers.BertConfig if family == "bert" else transformers.RoFormerConfig)(**shape)
    (transformers.BertForMaskedLM if family == "bert" else transformers.RoFormerForMaskedLM)(hf_config).save_pretrained(
        directory)
    S.SujiForMaskedLM.from_pretrained(directory).save_pretrained(f"{directory}/suji")


def _measure(spec: dict, queue):
    import torch
    import transformers

    import suji_models as S

    torch.manual_seed(0)
    torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # Both sides load the same saved weights the same way, so neither process's peak includes building the other.
    if spec["impl"] == "transformers":
        hf_class = transformers.BertForMaskedLM if spec["family"] == "bert" else transformers.RoFormerForMaskedLM
        model = hf_class.from_pretrained(spec["weights"])
    else:
        model = S.SujiForMaskedLM.from_pretrained(f"{spec['weights']}/suji")
        for flag in spec.get("variant", []):
            setattr(model.config, flag, True)
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
    else:
        _reset_peak_rss()  # peak over the timed steps only, as on GPU
    times = []
    for _ in range(spec["iters"]):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_kb() * 1024
    queue.put({"tokens_per_s": batch * seq / min(times), "peak_mb": peak / 2**20, "device": device,
               "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu"})


def measure(spec):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(spec, queue))
    proc.start()
    while True:  # a child that dies (import error, out of memory) must not leave us waiting forever
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise SystemExit(f"measurement {spec} died with exit code {proc.exitcode}") from None
    proc.join()
    return result


RUNS = [("transformers", dict(impl="transformers")), ("suji", dict(impl="suji")),
        ("suji, masked-only head", dict(impl="suji", masked_only=True)),
        ("suji + RealFormer", dict(impl="suji", variant=["residual_attention"])),
        ("suji + entropy scale", dict(impl="suji", variant=["entropy_invariant_scale"]))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--seqs", default="128,512")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the rows, alternating their order")
    parser.add_argument("--families", default="bert,roformer", help="comma-separated: bert, roformer")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as weights_dir:
        for seq in map(int, args.seqs.split(",")):
            for family in args.families.split(","):
                weights = f"{weights_dir}/{family}-{seq}"
                _save_reference(family, args.size, seq, weights)
                base = dict(size=args.size, seq=seq, batch=args.batch, iters=args.iters, warmup=args.warmup,
                            threads=args.threads, family=family, weights=weights)
                best = {}
                for round_ in range(args.rounds):
                    # Odd rounds run the rows in reverse: whatever drifts during a round (other load, the
                    # allocator, clocks) then favours no row. Each row keeps its best speed and lowest peak.
                    for name, spec in RUNS[::-1] if round_ % 2 else RUNS:
                        result = measure({**base, **spec})
                        print(f"seq {seq:4d} {family:8s} {name:24s} {result['tokens_per_s']:10.0f} tok/s  "
                              f"peak {result['peak_mb']:8.0f} MB", file=sys.stderr, flush=True)
                        kept = best.setdefault(name, result)
                        kept["tokens_per_s"] = max(kept["tokens_per_s"], result["tokens_per_s"])
                        kept["peak_mb"] = min(kept["peak_mb"], result["peak_mb"])
                reference = best[RUNS[0][0]]
                for name, _ in RUNS:
                    result = best[name]
                    rows.append({"seq": seq, "family": family, "model": name, **result,
                                 "speed_ratio": result["tokens_per_s"] / reference["tokens_per_s"],
                                 "memory_ratio": result["peak_mb"] / reference["peak_mb"]})
    device = rows[0]["device_name"]
    print(f"\n{args.size} model, batch {args.batch}, {'bf16' if rows[0]['device'] == 'cuda' else 'fp32'} on {device}; "
          "ratios vs transformers in the same run (speed: higher is better; memory: peak "
          f"{'GPU allocated' if rows[0]['device'] == 'cuda' else 'process RSS'}, lower is better)\n")
    print("| seq | family | model | tokens/s | tokens/s ratio | peak MB | peak memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seq']} | {r['family']} | {r['model']} | {r['tokens_per_s']:.0f} | {r['speed_ratio']:.2f}x "
              f"| {r['peak_mb']:.0f} | {r['memory_ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
