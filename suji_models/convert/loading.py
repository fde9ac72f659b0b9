"""`SujiFor*.from_pretrained`: native Suji checkpoints, transformers checkpoints converted on load
(bert / roformer / albert / gpt2), and TensorFlow checkpoints (Google BERT / bert4keras).

Policy: a weight the model needs that the checkpoint lacks, a checkpoint weight no rule knows,
or a shape mismatch is an error listing all of them; `strict_weights=False` reports them instead.
A task head added for finetuning (classifier, pooler) starts from fresh weights and is reported,
as are checkpoint weights the chosen head does not use (e.g. NSP, the MLM head of a classifier).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.utils import logging

from .hf import FAMILIES, config_from_hf, hf_to_suji_state_dict

logger = logging.get_logger(__name__)

# Missing weights that a finetuning head is expected to bring fresh.
NEW_HEAD_PREFIXES = ("classifier.", "suji.pooler.", "pooler.")
_LOADER_KWARGS = ("output_loading_info", "dtype", "torch_dtype", "config")


class WeightsMismatchError(ValueError):
    """The checkpoint does not fit the model; the message lists every offending weight."""


def checkpoint_kind(path) -> str:
    """'suji', one of FAMILIES, 'tf', or 'unknown' for a local directory or file."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        if model_type == "suji" or model_type in FAMILIES:
            return model_type
        if model_type is None and _find_tf_index(path) is not None:
            return "tf"  # a TF release whose bert_config is named config.json (bert4keras' CPM-LM, ...)
        raise ValueError(f"{path / 'config.json'}: model_type {model_type!r} is neither 'suji' nor one of {FAMILIES}")
    if _find_tf_index(path) is not None:
        return "tf"
    return "unknown"


def checkpoint_config(path):
    """The SujiConfig a checkpoint folder loads with: its own (Suji), or converted from a transformers
    bert / roformer / albert / gpt2 folder or a TF checkpoint, as `from_pretrained` would."""
    from ..configuration import SujiConfig

    kind = checkpoint_kind(path)
    if kind == "suji":
        return SujiConfig.from_pretrained(path)
    if kind in FAMILIES:
        from transformers import AutoConfig

        return config_from_hf(AutoConfig.from_pretrained(path))
    if kind == "tf":
        from .tf_names import tf_checkpoint_to_hf

        return config_from_hf(tf_checkpoint_to_hf(path)[0])
    raise ValueError(f"{path}: not a Suji, transformers or TF checkpoint folder")


def _find_tf_index(path: Path):
    if path.is_file() and ".ckpt" in path.name:
        return path
    if path.is_dir():
        hits = sorted(path.glob("*.ckpt.index")) or sorted(path.glob("*.index"))
        return hits[0] if hits else None
    if Path(str(path) + ".index").is_file():
        return path
    return None


def _read_transformers_dir(path: Path):
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(path)
    shards = sorted(path.glob("*.safetensors"))
    state = {}
    if shards:
        from safetensors.torch import load_file

        for shard in shards:
            state.update(load_file(shard))
    else:
        bins = sorted(path.glob("pytorch_model*.bin"))
        if not bins:
            raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model*.bin weights found")
        for shard in bins:
            state.update(torch.load(shard, map_location="cpu", weights_only=True))
    return hf_config, state


def judge_loading(model, missing, unexpected, *, unknown=(), ignored=(), mismatched=(), strict=True, source=""):
    """Apply the loading policy above; returns the loading-info dict."""
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if model.config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied]
    new_head = [k for k in missing if k.startswith(NEW_HEAD_PREFIXES)]
    missing_core = [k for k in missing if k not in new_head]
    info = {"missing_keys": missing_core, "new_head_keys": new_head, "unexpected_keys": list(unexpected),
            "unknown_keys": list(unknown), "ignored_keys": list(ignored), "mismatched_keys": list(mismatched)}
    problems = [(f"weights the model needs but {source or 'the checkpoint'} lacks", missing_core),
                ("checkpoint weights no conversion rule knows", list(unknown)),
                ("shape mismatches", list(mismatched))]
    problems = [(what, keys) for what, keys in problems if keys]
    if problems:
        message = f"{type(model).__name__} from {source}: " + "; ".join(
            f"{what}: {', '.join(map(str, keys))}" for what, keys in problems)
        if strict:
            raise WeightsMismatchError(message + " (pass strict_weights=False to load anyway and report)")
        logger.warning(message + " (strict_weights=False: left as initialized)")
    if new_head:
        logger.warning("%s: newly initialized task-head weights (train them): %s", type(model).__name__, ", ".join(new_head))
    if unexpected:
        logger.warning("%s: checkpoint weights not used by this head: %s", type(model).__name__, ", ".join(unexpected))
    return info


def load_pretrained(cls, path, model_args, strict: bool, kwargs: dict):
    want_info = kwargs.pop("output_loading_info", False)
    kind = checkpoint_kind(path) if Path(str(path)).exists() or Path(str(path) + ".index").exists() else "unknown"
    if kind in ("suji", "unknown"):
        model, info = PreTrainedModel.from_pretrained.__func__(cls, path, *model_args, output_loading_info=True, **kwargs)
        info = judge_loading(model, info["missing_keys"], info["unexpected_keys"],
                             mismatched=info.get("mismatched_keys", ()), strict=strict, source=str(path))
        return (model, info) if want_info else model

    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    if kind == "tf":
        from .tf_names import tf_checkpoint_to_hf

        hf_config, hf_state, tf_report = tf_checkpoint_to_hf(path)
        extra_ignored = list(tf_report.get("ignored", ())) + list(tf_report.get("unused", ()))
    else:
        hf_config, hf_state = _read_transformers_dir(Path(path))
        extra_ignored = []
    config = kwargs.pop("config", None) or config_from_hf(hf_config, **kwargs)
    model = cls(config, *model_args)
    from ..modeling import SujiModel

    converted = hf_to_suji_state_dict(hf_state, hf_config.model_type, "" if cls is SujiModel else "suji.")
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in converted.state_dict.items() if k in own and own[k].shape != v.shape]
    loadable = {k: v for k, v in converted.state_dict.items() if k in own and own[k].shape == v.shape}
    result = model.load_state_dict(loadable, strict=False)
    unexpected = [k for k in converted.state_dict if k not in own]
    info = judge_loading(model, result.missing_keys, unexpected, unknown=converted.unknown,
                         ignored=converted.ignored + extra_ignored, mismatched=mismatched, strict=strict,
                         source=f"{path} ({hf_config.model_type})")
    model.tie_weights()
    if dtype is not None:
        model.to(dtype)
    model.eval()
    return (model, info) if want_info else model
