"""CPM-LM few-shot generation, after Su Jianlin's "跟风玩玩目前最大的中文GPT2模型（bert4keras）"
(kexue.fm, 2020): CPM-LM is a 2.6B-parameter Chinese GPT2 (pre-LN, learned positions, tied output
embedding, jieba + sentencepiece vocabulary of 30,000); it is not finetuned, few-shot use is text
continuation: a prompt lists a few solved examples, one per line, and the model continues the last,
unsolved one; the answer is the continuation up to the end of that line.

What this module adds to `SujiForCausalLM.from_pretrained` is the large-model side:
- `memory_plan`: parameters counted on the meta device (nothing allocated), and the memory that the
  weights, the KV cache of a generation and the loading itself need, per dtype;
- `check_fits`: the plan against the memory this machine has, with an error that says what to change;
- `load_low_memory`: a transformers CPM-Generate folder (GPT2 names) or a bert4keras TF checkpoint
  loaded without building a randomly initialized model first: the model is created on the meta
  device and the checkpoint tensors, cast to the target dtype one by one, are assigned in place.
  Peak memory is the weights in the target dtype plus what the reader stages (one tensor for
  safetensors / memory-mapped .bin; the whole fp32 checkpoint for TF bundles, which are read whole).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configuration import SujiConfig
from ..convert.hf import config_from_hf, hf_to_suji_state_dict
from ..convert.loading import _find_tf_index, checkpoint_kind, judge_loading
from ..modeling import SujiForCausalLM

GiB = 2**30
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RUNTIME_OVERHEAD = int(0.5 * GiB)  # interpreter, torch, tokenizer, allocator slack


class InsufficientMemoryError(MemoryError):
    """The machine lacks the memory a plan needs; the message says how much and what to change."""


def count_parameters(config: SujiConfig) -> int:
    """Parameters of `SujiForCausalLM(config)`, built on the meta device (no memory is allocated);
    tied weights count once."""
    with torch.device("meta"):
        model = SujiForCausalLM(config)
    seen, total = set(), 0
    for p in model.parameters():  # parameters() already yields a tied tensor once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@dataclass
class MemoryPlan:
    parameters: int
    dtype: torch.dtype
    weights: int  # bytes
    kv_cache: int
    loading_staging: int
    overhead: int = RUNTIME_OVERHEAD

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.loading_staging + self.overhead

    def describe(self) -> str:
        return (f"{self.parameters / 1e9:.3f}B parameters in {str(self.dtype).replace('torch.', '')}: "
                f"weights {self.weights / GiB:.2f} GiB + KV cache {self.kv_cache / GiB:.2f} GiB + loading "
                f"{self.loading_staging / GiB:.2f} GiB + runtime {self.overhead / GiB:.2f} GiB = "
                f"{self.total / GiB:.2f} GiB")


def memory_plan(config: SujiConfig, dtype: torch.dtype, *, batch: int = 1, context: int | None = None,
                source: str = "safetensors", parameters: int | None = None) -> MemoryPlan:
    """Memory to load `config` in `dtype` and generate `batch` sequences of `context` tokens.

    KV cache: 2 (keys, values) x layers x batch x context x hidden elements. Loading staging: what the
    reader holds besides the model: one tensor (safetensors / .bin, read lazily), or the whole
    checkpoint in fp32 for a TF bundle (`source="tf"`), which is read whole before conversion."""
    size = torch.finfo(dtype).bits // 8
    parameters = parameters if parameters is not None else count_parameters(config)
    context = context or config.max_position_embeddings
    kv = 2 * config.num_hidden_layers * batch * context * config.hidden_size * size
    if source == "tf":
        staging = parameters * 4
    else:  # the largest single tensor: the (tied) embedding or an FFN matrix
        staging = max(config.vocab_size * config.embedding_size, config.hidden_size * config.intermediate_size) * size
    return MemoryPlan(parameters, dtype, parameters * size, kv, staging)


def available_memory(device) -> int:
    """Bytes this process may still allocate on `device`: free GPU memory, or the smaller of the
    kernel's MemAvailable and the cgroup limit left on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:  # a container's own limit can be far below the host's free memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def check_fits(plan: MemoryPlan, device, available: int | None = None) -> None:
    """Raise `InsufficientMemoryError` when `plan` needs more than `device` has."""
    available = available_memory(device) if available is None else available
    if plan.total <= available:
        return
    hints = []
    if plan.dtype == torch.float32:
        hints.append("--dtype bfloat16 halves the weights (on CPU it is slower and less exact)")
    if plan.kv_cache > GiB:
        hints.append("a shorter --max_length or a smaller batch shrinks the KV cache")
    if plan.loading_staging > plan.weights / 4:
        hints.append("convert the TF checkpoint once (suji-convert-tf) so loading streams tensors")
    hints.append("a GPU (or a machine) with more memory")
    raise InsufficientMemoryError(
        f"not enough memory on {device}: {plan.describe()}, but {available / GiB:.2f} GiB is available. "
        f"Options: {'; '.join(hints)}.")


def _read_transformers_lazily(path: Path, dtype: torch.dtype):
    """(hf_config, state) with every tensor cast to `dtype` as it is read, one at a time."""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(path)
    state = {}
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        from safetensors import safe_open

        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():
                    state[name] = f.get_tensor(name).to(dtype)
    else:
        bins = sorted(path.glob("pytorch_model*.bin"))
        if not bins:
            raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model*.bin weights found")
        for shard in bins:  # memory-mapped: pages are read as each tensor is cast
            for name, tensor in torch.load(shard, map_location="cpu", weights_only=True, mmap=True).items():
                state[name] = tensor.to(dtype)
    return hf_config, state


def load_low_memory(path, dtype: torch.dtype = torch.float32, device="cpu", *, strict: bool = True,
                    check_memory: bool = True, context: int | None = None):
    """`SujiForCausalLM` from a CPM-Generate-style transformers folder (gpt2), a bert4keras TF
    checkpoint or a Suji folder, built on the meta device and filled with the checkpoint's tensors in
    `dtype`: no random initialization is ever materialized. Returns (model, loading info)."""
    path = Path(path)
    # bojone's CPM_LM_bert4keras folder has a config.json without model_type next to the TF files,
    # which `checkpoint_kind` rejects: look for the TF index first.
    kind = "tf" if _find_tf_index(path) is not None else checkpoint_kind(path)
    if kind == "suji":
        model, info = SujiForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True,
                                                      strict_weights=strict)
        return model.to(device).eval(), info
    if kind == "tf":
        from ..convert.tf_names import tf_checkpoint_to_hf

        hf_config, hf_state, report = tf_checkpoint_to_hf(path)
        ignored = list(report.get("ignored", ())) + list(report.get("unused", ()))
    elif kind == "gpt2":
        hf_config, hf_state, ignored = *_read_transformers_lazily(path, dtype), []
    else:
        raise ValueError(f"{path}: expected a transformers gpt2 folder (CPM-Generate), a TF checkpoint or a "
                         f"Suji folder; found {kind!r}")
    if hf_config.model_type != "gpt2":
        raise ValueError(f"{path}: a {hf_config.model_type} checkpoint, not a GPT2 / CPM-LM one")
    config = config_from_hf(hf_config)
    if check_memory:
        plan = memory_plan(config, dtype, context=context, source="tf" if kind == "tf" else "safetensors")
        check_fits(plan, device)
    with torch.device("meta"):
        model = SujiForCausalLM(config)
    converted = hf_to_suji_state_dict(hf_state, "gpt2", "suji.")
    del hf_state
    own = {k: v.shape for k, v in model.state_dict().items()}
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k])}"
                  for k, v in converted.state_dict.items() if k in own and own[k] != v.shape]
    state = {k: converted.state_dict[k].to(device=device, dtype=dtype)
             for k in list(converted.state_dict) if k in own and own[k] == converted.state_dict[k].shape}
    unexpected = [k for k in converted.state_dict if k not in own]
    result = model.load_state_dict(state, strict=False, assign=True)
    info = judge_loading(model, result.missing_keys, unexpected, unknown=converted.unknown,
                         ignored=converted.ignored + ignored, mismatched=mismatched, strict=strict,
                         source=f"{path} (gpt2)")
    model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{path}: no weights for {', '.join(left)} (they would stay uninitialized)")
    return model.eval(), info


# ---- few-shot prompts ----------------------------------------------------------------------------

# One solved example per line and the question last, as in the post; the answer is what the model
# writes up to the end of the line. The examples are ours (common knowledge), not the post's.
TASKS = {
    "qa": {
        "template": "问题：{x}\n答案：{y}",
        "examples": [("中国的首都是哪里？", "北京"), ("日本的首都是哪里？", "东京"), ("美国的首都是哪里？", "华盛顿")],
        "queries": ["英国的首都是哪里？", "法国的首都是哪里？"],
    },
    "translation": {
        "template": "{x}的英文是{y}",
        "examples": [("狗", "dog"), ("猫", "cat"), ("苹果", "apple")],
        "queries": ["猪", "书"],
    },
    "sentiment": {
        "template": "评论：{x}\n情感：{y}",
        "examples": [("这家店的菜太好吃了，下次还来", "正面"), ("等了一个小时还没上菜，服务太差", "负面"),
                     ("房间干净，前台很热情", "正面")],
        "queries": ["质量很差，用了两天就坏了", "物流很快，包装也很好"],
    },
}


def fewshot_prompt(template: str, examples, query: str) -> str:
    """The solved examples, one per line (or per template block), then the query with its answer
    left open: the prompt ends exactly where the answer starts."""
    solved = [template.format(x=x, y=y) for x, y in examples]
    open_ = template.format(x=query, y="")
    return "\n".join(solved + [open_])


def newline_token_id(tokenizer) -> int | None:
    """The token a line break becomes (CPM: "▃"; a char vocabulary has none): generation stops on it."""
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    ids = [i for i in ids if i != tokenizer.convert_tokens_to_ids("\u2581")]
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


@torch.no_grad()
def complete(model, tokenizer, prompt: str, *, max_new_tokens: int = 16, do_sample: bool = False,
             top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0, streamer=None) -> str:
    """The model's continuation of `prompt` up to the end of its line (greedy by default)."""
    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    stop = newline_token_id(tokenizer)
    room = model.config.max_position_embeddings - max_new_tokens
    if len(ids) > room:
        raise ValueError(f"the prompt has {len(ids)} tokens; with {max_new_tokens} new tokens the model's "
                         f"{model.config.max_position_embeddings} positions allow {room}")
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True,
                  eos_token_id=stop, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    if do_sample:
        kwargs.update(top_k=top_k, top_p=top_p, temperature=temperature)  # 0: no top-k (None would mean 50)
    else:
        kwargs.update(top_k=None, top_p=None, temperature=None)
    input_ids = torch.tensor([ids], device=device)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer, **kwargs)
    new = out[0, len(ids):].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True)
    return text.split("\n")[0].strip()


def run_task(model, tokenizer, name: str, **kwargs) -> list[dict]:
    """Every query of a built-in task: [{"task", "query", "prompt", "answer"}]."""
    task = TASKS[name]
    rows = []
    for query in task["queries"]:
        prompt = fewshot_prompt(task["template"], task["examples"], query)
        rows.append({"task": name, "query": query, "prompt": prompt,
                     "answer": complete(model, tokenizer, prompt, **kwargs)})
    return rows


def plan_table(config: SujiConfig, context: int, batch: int = 1) -> str:
    """Markdown table of the memory plan for every dtype (parameters counted once, on meta)."""
    parameters = count_parameters(config)
    lines = ["| dtype | weights GiB | KV cache GiB | loading (safetensors / TF) GiB | total (safetensors / TF) GiB |",
             "|---|---|---|---|---|"]
    for name, dtype in DTYPES.items():
        st = memory_plan(config, dtype, batch=batch, context=context, parameters=parameters)
        tf = memory_plan(config, dtype, batch=batch, context=context, parameters=parameters, source="tf")
        lines.append(f"| {name} | {st.weights / GiB:.2f} | {st.kv_cache / GiB:.2f} | "
                     f"{st.loading_staging / GiB:.2f} / {tf.loading_staging / GiB:.2f} | "
                     f"{st.total / GiB:.2f} / {tf.total / GiB:.2f} |")
    return f"{parameters:,} parameters; batch {batch} x {context} tokens of KV cache\n\n" + "\n".join(lines)


def config_summary(config: SujiConfig) -> str:
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings")
    return json.dumps({k: getattr(config, k) for k in keys})
