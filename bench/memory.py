"""Memory per process of `pretrain/run_mlm.py` under ZeRO 0/1/2/3 and ZeRO-2 offload, same model, one run.

    python bench/memory.py --size base       # BERT-base shape, what README.md reports (CPU: about 3 minutes)
    python bench/memory.py                   # smaller: hidden 512 x 8 layers
    python bench/memory.py --configs 0,2     # a subset: 0 1 2 3 2-offload
    python bench/memory.py --size base --procs 8   # GPU: one process per GPU

Every configuration trains the same randomly initialized model (saved once, loaded with `--model`; vocab padded to
bert-base-chinese's 21128 so the embedding/LM-head matrix weighs what it weighs in practice) on the embedded
corpus for a few steps with `--procs` processes. The ranks are started the way the `deepspeed`/`torchrun`
launchers start them (RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, OMP_NUM_THREADS=1 on CPU),
each inside a tiny wrapper (WRAPPER below) that runs the script with `runpy` and reports three numbers:
- held: bytes of every tensor storage reachable from Python right after backward (weights, gradients, optimizer
  states, ZeRO's flat buffers, partitions and buckets), each storage once: what ZeRO is designed to divide;
- peak: the process's peak memory (CPU: peak RSS, VmHWM; GPU: `torch.cuda.max_memory_allocated()`), which
  adds the interpreter and libraries, activations, and every transient buffer;
- setup: the same peak up to the first batch (imports, data, model build, `deepspeed.initialize`).
The wrapper replaces the final save (consolidation, export check, export) with the report: it is not training
memory, and it dominated the time. Stage 0 is a JSON with `"zero_optimization": {"stage": 0}` written to a temp
file; the others are `configs/deepspeed/zero{1,2,3}.json` and `zero2_offload.json`. Ratios are against ZeRO-0
in the same run.

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
SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),  # smoke test
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2048),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
CONFIGS = {"0": None, "1": "configs/deepspeed/zero1.json", "2": "configs/deepspeed/zero2.json",
           "3": "configs/deepspeed/zero3.json", "2-offload": "configs/deepspeed/zero2_offload.json"}
STAGE0 = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
          "gradient_clipping": "auto", "zero_optimization": {"stage": 0}}

# Runs `python -c WRAPPER script args...` as `script args...`; prints this process's peak when setup ends (at the
# first batch: imports, data, model build, deepspeed.initialize) and over the training steps (peak counter reset
# at the first batch), when training ends.
WRAPPER = r"""
import gc, json, os, re, runpy, sys, warnings
import deepspeed
import torch
import suji_models.training.pretrain as pretrain

cuda = torch.cuda.is_available()
marks = {"rank": int(os.environ["RANK"])}

def peak_mb():
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as f:  # VmHWM: peak resident set size, resettable (unlike ru_maxrss)
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024

def reset_peak():
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

# Bytes of every tensor storage Python can reach (parameters, their .grad, optimizer states, DeepSpeed's flat
# buffers and partitions), each storage once. Unlike peak RSS it counts what is held, not what the allocator
# has touched, so it shows what ZeRO partitions on CPU too.
def live_tensor_mb():
    gc.collect()
    storages = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if not isinstance(obj, torch.Tensor):
                continue
            for tensor in (obj, obj.grad if obj.is_leaf else None):
                if tensor is not None and tensor.device.type != "meta":
                    storage = tensor.untyped_storage()
                    storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values()) / 2**20

backward = deepspeed.DeepSpeedEngine.backward
def backward_counting(self, *args, **kwargs):  # after backward: gradients and (from step 2) optimizer states live
    out = backward(self, *args, **kwargs)
    marks["held_mb"] = max(marks.get("held_mb", 0), live_tensor_mb())
    return out
deepspeed.DeepSpeedEngine.backward = backward_counting

train = pretrain.train
def train_marking_setup(model_fn, batches, args, **kwargs):
    def batches_marking_setup(index, rank, world):
        if "setup_mb" not in marks:
            marks["setup_mb"] = peak_mb()
            reset_peak()
        return batches(index, rank, world)
    return train(model_fn, batches_marking_setup, args, **kwargs)

def report(*args, **kwargs):  # replaces the final save; every rank calls it right after the last step
    marks["steps_mb"] = peak_mb()
    print("PEAK " + json.dumps(marks), flush=True)

pretrain.train, pretrain.save_final = train_marking_setup, report
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""



def prepare(size: str, vocab_size: int, work: Path) -> int:
    """The model every configuration loads, and a vocab.txt of that size (embedded vocab + [unused] entries)."""
    import torch

    from suji_models import SujiConfig, SujiForMaskedLM

    tokens = (REPO / "pretrain" / "data" / "vocab.txt").read_text(encoding="utf-8").split("\n")
    tokens = [t for t in tokens if t]
    tokens += [f"[unused{i}]" for i in range(1000, 1000 + vocab_size - len(tokens))]
    (work / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = SujiConfig.from_preset("bert-base", **SIZES[size], vocab_size=len(tokens))
    model = SujiForMaskedLM(config)
    model.save_pretrained(work / "model")
    (work / "stage0.json").write_text(json.dumps(STAGE0))
    return sum(p.numel() for p in model.parameters())


def run_config(name: str, args, work: Path, cuda: bool) -> dict:
    config = CONFIGS[name] or str(work / "stage0.json")
    script = ["pretrain/run_mlm.py", "--tokenizer", str(work / "vocab.txt"), "--model", str(work / "model"),
              "--deepspeed_config", config, "--max_seq_length", str(args.seq),
              "--per_device_batch_size", str(args.batch), "--max_steps", str(args.steps),
              "--log_steps", str(args.steps), "--warmup_steps", "1", "--output_dir", str(work / f"run-{name}")]
    port = str(free_port())
    procs = []
    for rank in range(args.procs):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(args.procs),
               "LOCAL_WORLD_SIZE": str(args.procs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        if not cuda:
            env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
        with open(work / f"log-{name}-{rank}.txt", "w") as log:  # files, not pipes: a full pipe would stall a rank
            procs.append(subprocess.Popen([sys.executable, "-c", WRAPPER, *script], cwd=REPO, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    started = time.time()
    for proc in procs:
        try:
            proc.wait(timeout=max(1, args.timeout - (time.time() - started)))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise SystemExit(f"ZeRO {name}: no result after {args.timeout}s")
    logs = [(work / f"log-{name}-{rank}.txt").read_text() for rank in range(args.procs)]
    peaks = sorted((json.loads(m) for log in logs for m in re.findall(r"^PEAK (.*)$", log, re.M)),
                   key=lambda p: p["rank"])
    if any(p.returncode for p in procs) or len(peaks) != args.procs:
        raise SystemExit(f"ZeRO {name} failed (exit codes {[p.returncode for p in procs]}):\n"
                         + "\n".join(log[-3000:] for log in logs))
    return {"config": name, "held_mb": [p["held_mb"] for p in peaks], "setup_mb": [p["setup_mb"] for p in peaks],
            "steps_mb": [p["steps_mb"] for p in peaks], "peaks_mb": [max(p["setup_mb"], p["steps_mb"]) for p in peaks],
            "wall_s": time.time() - started}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab_size", type=int, default=21128)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    names = pick(args.configs, CONFIGS, "configs")
    import torch

    cuda = cuda_available()
    work = Path(tempfile.mkdtemp(prefix="suji-bench-memory-"))
    rows = []
    try:
        params = prepare(args.size, args.vocab_size, work)
        for name in names:
            rows.append(run_config(name, args, work, cuda))
            print(f"ZeRO {name:10s} held {' '.join(f'{m:6.0f}' for m in rows[-1]['held_mb'])} MB, "
                  f"setup {' '.join(f'{m:6.0f}' for m in rows[-1]['setup_mb'])} MB, steps "
                  f"{' '.join(f'{m:6.0f}' for m in rows[-1]['steps_mb'])} MB "
                  f"({rows[-1]['wall_s']:.0f}s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reference = next((r for r in rows if r["config"] == "0"), rows[0])
    what = "torch.cuda.max_memory_allocated" if cuda else "peak RSS (VmHWM)"
    print(f"\n{args.size} model ({SIZES[args.size]['hidden_size']} hidden x {SIZES[args.size]['num_hidden_layers']} "
          f"layers, vocab {args.vocab_size}, {params / 1e6:.1f}M parameters: {params * 4 / 2**20:.0f} MB fp32 weights, "
          f"Adam states 2x that), {args.procs} processes, batch {args.batch} x seq {args.seq}, {args.steps} steps, "
          f"{'bf16 on ' + torch.cuda.get_device_name() if cuda else 'fp32 on CPU (gloo)'}. Per process, max over "
          "ranks: held = tensor storages reachable after backward (weights, gradients, optimizer states, ZeRO "
          f"buffers); peak = {what} over the whole process; setup = the same until the first batch (imports, "
          f"data, model build, deepspeed.initialize). Ratios vs `ZeRO {reference['config']}` in the same run\n")
    print("| ZeRO | held MB | held ratio | peak MB | peak ratio | setup MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {max(r['held_mb']):.0f} | {max(r['held_mb']) / max(reference['held_mb']):.2f}x "
              f"| {max(r['peaks_mb']):.0f} | {max(r['peaks_mb']) / max(reference['peaks_mb']):.2f}x "
              f"| {max(r['setup_mb']):.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
