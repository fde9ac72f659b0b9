"""CPM-LM few-shot generation (no training), after "跟风玩玩目前最大的中文GPT2模型（bert4keras）".

Model: CPM-LM (2.6B, TsinghuaAI/CPM-Generate) as users have it: the transformers folder
(`config.json` with model_type gpt2, weights, `spiece.model` for CpmTokenizer) or bojone's bert4keras TF
checkpoint (`CPM_LM_bert4keras`: model.ckpt.* + config.json; pass `--tokenizer` with the spiece.model).
Loading builds the model on the meta device and assigns the checkpoint's tensors in the target dtype,
so the weights are held once; the memory it needs is checked first.

    python finetune/cpm_fewshot.py --model_preset cpm-lm-2.6b --plan       # memory per dtype, nothing loaded
    python finetune/cpm_fewshot.py --model CPM-Generate/ --tasks qa,translation,sentiment
    python finetune/cpm_fewshot.py --model CPM-Generate/ --prompt $'狗 dog\\n猫 cat\\n猪' --stream
    python finetune/cpm_fewshot.py --model cpm_lm_bert4keras/ --tokenizer CPM-Generate/spiece.model

Dtype: bfloat16 on a GPU, float32 on CPU (`--dtype` overrides). Decoding is greedy (the answer is
the continuation up to the end of its line); `--do_sample --top_k/--top_p/--temperature` sample.

Measured: the real 2.6B checkpoint is not available on this project's machines (no download), so no
answers of the real model are reported here; the memory plan below is computed, and the loading and
prompting paths are tested on a small random model of the same architecture
(tests/test_cpm_fewshot.py). `--plan` for cpm-lm-2.6b (2,597,073,920 parameters, counted on the meta
device; KV cache for batch 1 x 1024 tokens; totals include 0.5 GiB of runtime):

| dtype | weights GiB | KV cache GiB | loading (safetensors / TF) GiB | total (safetensors / TF) GiB |
|---|---|---|---|---|
| float32 | 9.67 | 0.62 | 0.29 / 9.67 | 11.09 / 20.47 |
| bfloat16 | 4.84 | 0.31 | 0.14 / 9.67 | 5.79 / 15.32 |
| float16 | 4.84 | 0.31 | 0.14 / 9.67 | 5.79 / 15.32 |
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from suji_models.configuration import SujiConfig
from suji_models.tasks import fewshot as F


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="CPM-Generate folder, bert4keras TF checkpoint or Suji folder")
    parser.add_argument("--model_preset", help="with --plan: a preset shape instead of a checkpoint")
    parser.add_argument("--tokenizer", help="tokenizer folder or spiece.model (default: the --model folder)")
    parser.add_argument("--dtype", choices=["auto", *F.DTYPES], default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--plan", action="store_true", help="print the memory plan per dtype and exit")
    parser.add_argument("--tasks", default="qa,translation,sentiment", help=f"built-in prompts: {','.join(F.TASKS)}")
    parser.add_argument("--prompt", help="continue this prompt instead of the built-in tasks")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--context", type=int, default=None,
                        help="KV-cache length to plan for (default: all positions)")
    parser.add_argument("--do_sample", action="store_true")
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream", action="store_true", help="print the continuation token by token")
    parser.add_argument("--output", help="write the answers here as JSON")
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    auto_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = F.DTYPES[args.dtype] if args.dtype != "auto" else auto_dtype

    if args.plan:
        if args.model_preset:
            config = SujiConfig.from_preset(args.model_preset)
        elif args.model:
            config = _config_of(args.model)
        else:
            parser.error("--plan needs --model or --model_preset")
        context = args.context or config.max_position_embeddings
        print(F.config_summary(config))
        print(F.plan_table(config, context))
        plan = F.memory_plan(config, dtype, context=context)
        print(f"\nthis machine ({device}): {F.available_memory(device) / F.GiB:.2f} GiB available; "
              f"{plan.describe()}")
        return 0
    if not args.model:
        parser.error("--model is required (or --plan with --model_preset)")

    from tokenization import load_tokenizer

    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    try:
        model, _ = F.load_low_memory(args.model, dtype=dtype, device=device, context=args.context)
    except F.InsufficientMemoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    decoding = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, top_k=args.top_k,
                    top_p=args.top_p, temperature=args.temperature)
    rows = []
    if args.prompt is not None:
        streamer = None
        if args.stream:
            from transformers import TextStreamer

            streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        answer = F.complete(model, tokenizer, args.prompt, streamer=streamer, **decoding)
        rows.append({"task": "prompt", "query": args.prompt, "prompt": args.prompt, "answer": answer})
        if not args.stream:
            print(answer)
    else:
        for name in args.tasks.split(","):
            if name not in F.TASKS:
                parser.error(f"unknown task {name!r}; known: {', '.join(F.TASKS)}")
            for row in F.run_task(model, tokenizer, name, **decoding):
                rows.append(row)
                print(f"[{name}] {row['query']} -> {row['answer']}")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


def _config_of(path):
    from suji_models.convert.hf import config_from_hf
    from suji_models.convert.loading import checkpoint_kind

    kind = checkpoint_kind(path)
    if kind == "suji":
        return SujiConfig.from_pretrained(path)
    if kind == "tf":
        from suji_models.convert.tf_names import tf_checkpoint_to_hf

        return config_from_hf(tf_checkpoint_to_hf(path)[0])  # reads the weights too: prefer a preset
    from transformers import AutoConfig

    return config_from_hf(AutoConfig.from_pretrained(path))


if __name__ == "__main__":
    sys.exit(main())
