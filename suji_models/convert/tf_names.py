"""Map TF1 checkpoints (Google BERT / ALBERT, bert4keras RoFormer / NEZHA / GPT2-CPM) onto
Hugging Face transformers names and configs, without TensorFlow.

    from suji_models.convert.tf_names import tf_checkpoint_to_hf
    hf_config, state_dict, report = tf_checkpoint_to_hf("chinese_L-12_H-768_A-12/")
    model = transformers.BertForMaskedLM(hf_config)
    model.load_state_dict(state_dict, strict=False)   # report["missing"] lists what is left out

Families and their TF names (the checkpoint's variables decide; a config hint breaks ties):

* ``bert``: Google BERT (``bert/embeddings/position_embeddings`` present) -> ``bert.*``, ``cls.*``
  (BertForPreTraining names: the pooler and NSP head are included; BertForMaskedLM ignores them).
* ``roformer``: bert4keras RoFormer, BERT names without ``position_embeddings`` (rotary positions);
  ``bert/encoder/embedding_hidden_mapping_in`` -> ``roformer.embeddings_project``. The fixed
  sinusoidal table ``roformer.encoder.embed_positions.weight`` is computed (HF stores it). The
  pooler / NSP have no place in HF RoFormer and are reported as unused.
* ``nezha``: BERT names plus a NEZHA config hint (``max_relative_position`` /
  ``use_relative_position`` / ``model_type: nezha``, as in Huawei's configs). transformers 5 has
  no NEZHA model: weights are mapped onto BERT names (a stored ``position_embeddings`` table, if
  any, is reported unused) and the report says that the functional relative positions are not
  represented (a BertForMaskedLM built from it is not NEZHA; Suji's loader refuses it as missing
  position embeddings).
* ``albert``: Google ALBERT / albert_zh (google format) / bert4keras ALBERT: factorized embeddings,
  ``bert/encoder/embedding_hidden_mapping_in``, shared layers under
  ``bert/encoder/transformer/group_G/inner_group_I/...`` -> ``albert.*``, ``predictions.*``,
  ``sop_classifier.classifier`` (AlbertForPreTraining names).
* ``gpt2``: bert4keras ``GPT2`` (e.g. CPM-LM converted by bojone/CPM_LM_bert4keras): ``gpt/...``
  names, pre-LN (``attention/input/LayerNorm`` = ln_1, ``input/LayerNorm`` = ln_2,
  ``gpt/output/LayerNorm`` = ln_f) -> GPT2LMHeadModel (``transformer.*``; q/k/v are fused into
  ``c_attn``; Conv1D keeps TF's [in, out] layout).

Conventions: dense ``kernel`` [in, out] is transposed to torch Linear [out, in], except
``cls/seq_relationship/output_weights`` (already [2, hidden]) and GPT2's Conv1D weights;
``gamma``/``beta`` -> ``weight``/``bias``. ``hidden_act: "gelu"`` is the exact erf GELU (as in
bert4keras / HF) -> HF ``"gelu"``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers

from .tf_checkpoint import TFCheckpointError, TFCheckpointReader, UnsupportedCheckpointError

__all__ = ["tf_checkpoint_to_hf", "detect_family", "map_tf_name", "TFNameMappingError", "FAMILIES"]


class TFNameMappingError(TFCheckpointError):
    """The checkpoint does not fit the config / no known model family."""


FAMILIES = ("bert", "roformer", "nezha", "albert", "gpt2")

# ------------------------------------------------------------------------------- name tables
# A rule is (tf template, hf template, kind). Placeholders: {i} {g} layer / group numbers;
# {d} matches kernel|bias (-> weight|bias, kernel transposed unless kind says "keep");
# {n} matches gamma|beta (-> weight|bias). kind: None | "keep" (no transpose) | ("qkv", part).


def _bert_like(h: str, *, positions: bool, pooler: str | None, nsp: str | None,
               mapping_in: str | None) -> list:
    rules = [
        ("bert/embeddings/word_embeddings", f"{h}.embeddings.word_embeddings.weight", None),
        ("bert/embeddings/token_type_embeddings", f"{h}.embeddings.token_type_embeddings.weight",
         None),
        ("bert/embeddings/LayerNorm/{n}", f"{h}.embeddings.LayerNorm.{{n}}", None),
    ]
    if positions:
        rules.append(("bert/embeddings/position_embeddings",
                      f"{h}.embeddings.position_embeddings.weight", None))
    if mapping_in:
        rules.append(("bert/encoder/embedding_hidden_mapping_in/{d}", mapping_in + ".{d}", None))
    layer = "bert/encoder/layer_{i}/"
    for mod in ("attention/self/query", "attention/self/key", "attention/self/value",
                "attention/output/dense", "intermediate/dense", "output/dense"):
        rules.append((layer + mod + "/{d}", f"{h}.encoder.layer.{{i}}.{mod.replace('/', '.')}.{{d}}",
                      None))
    for mod in ("attention/output", "output"):
        rules.append((layer + mod + "/LayerNorm/{n}",
                      f"{h}.encoder.layer.{{i}}.{mod.replace('/', '.')}.LayerNorm.{{n}}", None))
    rules += [
        ("cls/predictions/transform/dense/{d}", "cls.predictions.transform.dense.{d}", None),
        ("cls/predictions/transform/LayerNorm/{n}", "cls.predictions.transform.LayerNorm.{n}",
         None),
        ("cls/predictions/output_bias", "cls.predictions.bias", None),
    ]
    if pooler:
        rules.append(("bert/pooler/dense/{d}", pooler + ".{d}", None))
    if nsp:  # output_weights is [2, hidden] = torch layout already
        rules += [("cls/seq_relationship/output_weights", nsp + ".weight", "keep"),
                  ("cls/seq_relationship/output_bias", nsp + ".bias", None)]
    return rules


def _albert() -> list:
    rules = _bert_like("albert", positions=True, pooler="albert.pooler",
                       nsp="sop_classifier.classifier",
                       mapping_in="albert.encoder.embedding_hidden_mapping_in")
    rules = [r for r in rules if not r[0].startswith(("bert/encoder/layer_", "cls/predictions"))]
    tf = "bert/encoder/transformer/group_{g}/inner_group_{i}/"
    hf = "albert.encoder.albert_layer_groups.{g}.albert_layers.{i}."
    for t, h in [("attention_1/self/query/{d}", "attention.query.{d}"),
                 ("attention_1/self/key/{d}", "attention.key.{d}"),
                 ("attention_1/self/value/{d}", "attention.value.{d}"),
                 ("attention_1/output/dense/{d}", "attention.dense.{d}"),
                 ("LayerNorm/{n}", "attention.LayerNorm.{n}"),
                 ("ffn_1/intermediate/dense/{d}", "ffn.{d}"),
                 ("ffn_1/intermediate/output/dense/{d}", "ffn_output.{d}"),
                 ("LayerNorm_1/{n}", "full_layer_layer_norm.{n}")]:
        rules.append((tf + t, hf + h, None))
    rules += [("cls/predictions/transform/dense/{d}", "predictions.dense.{d}", None),
              ("cls/predictions/transform/LayerNorm/{n}", "predictions.LayerNorm.{n}", None),
              ("cls/predictions/output_bias", "predictions.bias", None)]
    return rules


def _gpt2() -> list:
    tf, hf = "gpt/transformer/layer_{i}/", "transformer.h.{i}."
    rules = [("gpt/embeddings/word_embeddings", "transformer.wte.weight", None),
             ("gpt/embeddings/position_embeddings", "transformer.wpe.weight", None),
             ("gpt/output/LayerNorm/{n}", "transformer.ln_f.{n}", None),
             (tf + "attention/input/LayerNorm/{n}", hf + "ln_1.{n}", None),
             (tf + "input/LayerNorm/{n}", hf + "ln_2.{n}", None),
             (tf + "attention/output/dense/{d}", hf + "attn.c_proj.{d}", "keep"),
             (tf + "intermediate/dense/{d}", hf + "mlp.c_fc.{d}", "keep"),
             (tf + "output/dense/{d}", hf + "mlp.c_proj.{d}", "keep")]
    for part, qkv in enumerate(("query", "key", "value")):
        rules.append((tf + f"attention/self/{qkv}/{{d}}", hf + "attn.c_attn.{d}", ("qkv", part)))
    return rules


_RULES = {
    "bert": _bert_like("bert", positions=True, pooler="bert.pooler.dense",
                       nsp="cls.seq_relationship", mapping_in=None),
    # NEZHA's positions are functional: a stored absolute table (if any) is not used by it
    "nezha": _bert_like("bert", positions=False, pooler="bert.pooler.dense",
                        nsp="cls.seq_relationship", mapping_in=None)
    + [("bert/embeddings/position_embeddings", None, None)],
    # HF RoFormer has no pooler / NSP head: known names without a place (hf template None)
    "roformer": _bert_like("roformer", positions=False, pooler=None, nsp=None,
                           mapping_in="roformer.embeddings_project")
    + [("bert/pooler/dense/{d}", None, None), ("cls/seq_relationship/output_{w}", None, None)],
    "albert": _albert(),
    "gpt2": _gpt2(),
}

# (class whose names the state dict uses, MLM / LM class)
_CLASSES = {
    "bert": ("BertForPreTraining", "BertForMaskedLM"),
    "nezha": ("BertForPreTraining", "BertForMaskedLM"),
    "roformer": ("RoFormerForMaskedLM", "RoFormerForMaskedLM"),
    "albert": ("AlbertForPreTraining", "AlbertForMaskedLM"),
    "gpt2": ("GPT2LMHeadModel", "GPT2LMHeadModel"),
}
_BACKBONE = {"bert": "bert.", "nezha": "bert.", "roformer": "roformer.", "albert": "albert.",
             "gpt2": "transformer."}

_PLACEHOLDER = {"i": r"(?P<i>\d+)", "g": r"(?P<g>\d+)", "d": r"(?P<d>kernel|bias)",
                "n": r"(?P<n>gamma|beta)", "w": r"(?P<w>weights|bias)"}
_HF_SUFFIX = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_COMPILED: dict[str, list] = {}


def _compiled(family: str) -> list:
    if family not in _COMPILED:
        out = []
        for tf, hf, kind in _RULES[family]:
            pattern = re.sub(r"\\\{(\w)\\\}", lambda m: _PLACEHOLDER[m.group(1)], re.escape(tf))
            out.append((re.compile(pattern), hf, kind))
        _COMPILED[family] = out
    return _COMPILED[family]


@dataclass
class _Target:
    hf_name: str
    transpose: bool
    part: int | None  # GPT2 q/k/v slot in the fused c_attn


def map_tf_name(family: str, tf_name: str) -> _Target | None:
    """HF name (and layout change) of one TF variable, or None when no rule knows it.

    A known variable that has no place in transformers gets ``hf_name == ""``.
    """
    for pattern, hf, kind in _compiled(family):
        m = pattern.fullmatch(tf_name)
        if m and hf is None:
            return _Target("", False, None)
        if m:
            groups = m.groupdict()
            values = {k: (_HF_SUFFIX[v] if k in "dn" else v) for k, v in groups.items()}
            transpose = groups.get("d") == "kernel" and kind != "keep" and not isinstance(kind, tuple)
            part = kind[1] if isinstance(kind, tuple) else None
            return _Target(hf.format(**values), transpose, part)
    return None


# ---------------------------------------------------------------------------- family detection
_HINT_KEYS = ("model_type", "model", "family", "model_name")
_HINT_VALUES = {"bert": "bert", "roberta": "bert", "roformer": "roformer", "nezha": "nezha",
                "albert": "albert", "gpt2": "gpt2", "gpt2_cpm": "gpt2", "cpm": "gpt2",
                "gpt": "gpt2"}


def _config_hint(config: dict) -> str | None:
    for key in _HINT_KEYS:
        v = config.get(key)
        if isinstance(v, str) and v.lower() in _HINT_VALUES:
            return _HINT_VALUES[v.lower()]
    if config.get("max_relative_position") or config.get("use_relative_position"):
        return "nezha"
    if "rotary_value" in config:
        return "roformer"
    return None


def detect_family(names, config: dict | None = None, where: str = "checkpoint") -> str:
    """Family from the variable names; ``config`` (a bert_config.json dict) breaks ties."""
    names = set(names)
    hint = _config_hint(config or {})

    def has(prefix):
        return any(n.startswith(prefix) for n in names)

    if has("bert/encoder/layer_shared/"):  # projects word embeddings before adding positions
        raise UnsupportedCheckpointError(
            f"{where}: brightmart albert_zh checkpoints (bert/encoder/layer_shared/..., "
            f"word_embeddings_2) are not supported: their embedding layout has no transformers "
            f"counterpart; use the google-format albert_zh release")
    if has("bert/encoder/transformer/group_"):
        found = "albert"
    elif has("gpt/transformer/layer_"):
        if "gpt/output/LayerNorm/gamma" not in names:
            raise UnsupportedCheckpointError(
                f"{where}: bert4keras GPT (GPT-1 style, no gpt/output/LayerNorm) is not supported; "
                f"only the pre-LN GPT2 layout (CPM-LM) is")
        found = "gpt2"
    elif has("bert/encoder/layer_"):
        if hint == "nezha":  # NEZHA configs say max_relative_position / use_relative_position
            found = "nezha"
        elif "bert/embeddings/position_embeddings" in names:
            found = "bert"
        else:  # no learned positions and no NEZHA hint: rotary (bert4keras RoFormer)
            found = "roformer"
    else:
        for prefix, what in [("newslm/", "GPT2_ML (newslm/...)"), ("electra/", "ELECTRA"),
                             ("encoder/block_", "T5")]:
            if has(prefix):
                raise UnsupportedCheckpointError(f"{where}: {what} checkpoints are not supported")
        sample = ", ".join(sorted(names)[:5])
        raise TFNameMappingError(
            f"{where}: cannot tell the model family from the variable names (first: {sample}); "
            f"supported: Google BERT / ALBERT, bert4keras RoFormer / NEZHA / GPT2")
    if hint and hint != found and {hint, found} != {"bert", "nezha"}:
        raise TFNameMappingError(
            f"{where}: the variable names look like {found} but the config says {hint}")
    return found


# ------------------------------------------------------------------------------------- config
_ACT = {"gelu": "gelu", "gelu_erf": "gelu", "gelu_tanh": "gelu_new", "gelu_new": "gelu_new",
        "gelu_fast": "gelu_fast", "relu": "relu", "tanh": "tanh", "swish": "silu",
        "silu": "silu", "linear": "linear", "sigmoid": "sigmoid"}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def _find_config(prefix: Path) -> Path | None:
    d = prefix.parent
    for name in ("bert_config.json", "albert_config.json", "config.json"):
        if (d / name).is_file():
            return d / name
    cands = sorted(d.glob("*config*.json"))
    return cands[0] if len(cands) == 1 else None


def _hf_config(family: str, cfg: dict, shapes: dict, where: str):
    """bert_config.json dict -> transformers config. Sizes missing from the file are taken from
    the checkpoint's shapes (type vocab, positions, embedding size); present ones are checked
    later against the tensors."""
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise TFNameMappingError(f"{where}: config lacks {', '.join(missing)}")
    act = cfg.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _ACT:
        raise TFNameMappingError(f"{where}: unsupported hidden_act {act!r} "
                                 f"(supported: {', '.join(_ACT)})")
    act = _ACT[act]
    intermediate = cfg.get("intermediate_size", 4 * cfg["hidden_size"])
    drop = cfg.get("hidden_dropout_prob", cfg.get("dropout_rate", 0.1))
    att_drop = cfg.get("attention_probs_dropout_prob", drop)

    def shape0(name, default):
        return shapes[name][0] if name in shapes else default

    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=cfg["vocab_size"], n_embd=cfg["hidden_size"],
            n_layer=cfg["num_hidden_layers"], n_head=cfg["num_attention_heads"],
            n_inner=intermediate, activation_function=act, resid_pdrop=drop, embd_pdrop=drop,
            attn_pdrop=att_drop,
            n_positions=cfg.get("max_position_embeddings",
                                shape0("gpt/embeddings/position_embeddings", 1024)),
            layer_norm_epsilon=cfg.get("layer_norm_eps", cfg.get("layer_norm_epsilon", 1e-5)),
            initializer_range=cfg.get("initializer_range", 0.02), bos_token_id=None,
            eos_token_id=None, tie_word_embeddings=True)
    kw = dict(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
        intermediate_size=intermediate, hidden_act=act, hidden_dropout_prob=drop,
        attention_probs_dropout_prob=att_drop,
        type_vocab_size=cfg.get("type_vocab_size",
                                shape0("bert/embeddings/token_type_embeddings", 2)),
        initializer_range=cfg.get("initializer_range", 0.02),
        layer_norm_eps=cfg.get("layer_norm_eps", cfg.get("layer_norm_epsilon", 1e-12)),
        tie_word_embeddings=True,
    )
    emb = cfg.get("embedding_size") or (shapes["bert/embeddings/word_embeddings"][1]
                                        if "bert/embeddings/word_embeddings" in shapes
                                        else cfg["hidden_size"])
    if family in ("bert", "nezha"):
        if family == "bert" or "max_position_embeddings" in cfg:
            kw["max_position_embeddings"] = cfg.get(
                "max_position_embeddings", shape0("bert/embeddings/position_embeddings", 512))
        hf = transformers.BertConfig(**kw)
        if family == "nezha":
            hf.nezha_max_relative_position = cfg.get("max_relative_position", 64)
        return hf
    if family == "roformer":
        if cfg.get("rotary_value"):
            raise UnsupportedCheckpointError(f"{where}: rotary_value=true is not supported")
        return transformers.RoFormerConfig(
            embedding_size=emb, max_position_embeddings=cfg.get("max_position_embeddings", 1536),
            rotary_value=False, **kw)
    # albert
    if cfg.get("net_structure_type", 0) or cfg.get("ln_type", "postln") != "postln":
        raise UnsupportedCheckpointError(
            f"{where}: ALBERT variant net_structure_type={cfg.get('net_structure_type')} / "
            f"ln_type={cfg.get('ln_type')} is not supported")
    return transformers.AlbertConfig(
        embedding_size=emb, num_hidden_groups=cfg.get("num_hidden_groups", 1),
        inner_group_num=cfg.get("inner_group_num", 1),
        max_position_embeddings=cfg.get("max_position_embeddings",
                                        shape0("bert/embeddings/position_embeddings", 512)),
        classifier_dropout_prob=cfg.get("classifier_dropout_prob", drop),
        bos_token_id=None, eos_token_id=None, **kw)


def _expected(cls_name: str, hf_config):
    """Parameter shapes and tied keys of a transformers class, built on the meta device."""
    with torch.device("meta"):
        model = getattr(transformers, cls_name)(hf_config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = dict(getattr(model, "all_tied_weights_keys", None)
                or getattr(model, "_tied_weights_keys", None) or {})
    return shapes, tied


def _roformer_sinusoid(hf_config) -> torch.Tensor:
    """HF's fixed RoFormer position table (it is stored in HF checkpoints)."""
    from transformers.models.roformer.modeling_roformer import RoFormerSinusoidalPositionalEmbedding

    dim = hf_config.hidden_size // hf_config.num_attention_heads
    table = RoFormerSinusoidalPositionalEmbedding(hf_config.max_position_embeddings, dim)
    return table.create_weight()


# -------------------------------------------------------------------------------- conversion
def tf_checkpoint_to_hf(path_or_dir, *, config: str | os.PathLike | dict | None = None,
                        family: str | None = None, head: str = "all", verify: bool = True):
    """Read a TF1 checkpoint and return ``(hf_config, state_dict, report)``.

    ``path_or_dir``: prefix, any checkpoint file, or a directory (see ``read_tf_checkpoint``).
    ``config``: bert_config.json path or dict (default: ``bert_config.json`` / ``config.json`` /
    ``albert_config.json`` next to the checkpoint). ``family``: force one of ``FAMILIES``.
    ``head``: ``"all"`` keeps every mappable weight (BertForPreTraining / AlbertForPreTraining
    names, so the pooler and NSP/SOP head are kept); ``"mlm"`` keeps only what
    ``report["architecture"]`` (the *ForMaskedLM / LM model) uses.

    ``report``: ``family``, ``architecture``, ``checkpoint``, ``config_file``, ``mapped``
    ({tf name: hf name}), ``unused`` (TF variables the MLM/LM model does not use: pooler, NSP,
    unknown ones), ``unknown`` (TF variables no rule knows), ``ignored`` (optimizer slots,
    global_step), ``missing`` (HF weights not provided; tied ones excluded), ``computed``,
    ``notes``. Raises on shape mismatches with the config, on missing backbone weights and on
    unsupported checkpoints.
    """
    if head not in ("all", "mlm"):
        raise ValueError(f"head must be 'all' or 'mlm', not {head!r}")
    reader = TFCheckpointReader(path_or_dir, verify=verify)
    where = reader.index_path
    if isinstance(config, dict):
        cfg, config_file = dict(config), None
    else:
        config_file = Path(config) if config is not None else _find_config(reader.prefix)
        if config_file is None or not config_file.is_file():
            raise TFNameMappingError(
                f"{where}: no config found (looked for bert_config.json, albert_config.json, "
                f"config.json next to it); pass config=")
        try:
            cfg = json.loads(config_file.read_text(encoding="utf-8"))
        except ValueError as e:
            raise TFNameMappingError(f"{config_file}: not valid JSON ({e})") from None
    cfg_where = str(config_file) if config_file else "config"

    shapes = {n: e.shape for n, e in reader.entries.items()}
    if family is None:
        family = detect_family(shapes, cfg, where)
    elif family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    hf_config = _hf_config(family, cfg, shapes, cfg_where)
    full_cls, mlm_cls = _CLASSES[family]
    hf_config.architectures = [mlm_cls]
    expected, tied = _expected(full_cls, hf_config)
    mlm_keys = set(_expected(mlm_cls, hf_config)[0]) if mlm_cls != full_cls else set(expected)

    # 1. names -> targets; unknown names are reported, names the config has no room for fail.
    targets, unknown, no_place, no_room = {}, [], [], []
    for name in reader.entries:
        t = map_tf_name(family, name)
        if t is None:
            unknown.append(name)
        elif not t.hf_name:
            no_place.append(name)
        elif t.hf_name not in expected:
            no_room.append(f"{name} -> {t.hf_name}")
        else:
            targets[name] = t
    if no_room:
        raise TFNameMappingError(
            f"{where}: variables with no place in {full_cls} built from {cfg_where} "
            f"(num_hidden_layers={cfg.get('num_hidden_layers')}, "
            f"num_hidden_groups={cfg.get('num_hidden_groups', '-')}): " + "; ".join(no_room))

    # 2. check shapes before reading any data (cheap, and the clearest error for a bad config)
    def converted_shape(name, t):
        s = tuple(shapes[name])
        if t.transpose:
            s = s[::-1]
        if t.part is not None:  # one third of the fused c_attn
            s = s[:-1] + (s[-1] * 3,)
        return s

    bad = [f"{n} {list(shapes[n])} -> {t.hf_name} expects {list(expected[t.hf_name])}"
           for n, t in targets.items() if converted_shape(n, t) != expected[t.hf_name]]
    if bad:
        sizes = ", ".join(f"{k}={cfg[k]}" for k in ("vocab_size", "hidden_size", "embedding_size",
                          "intermediate_size", "max_position_embeddings", "type_vocab_size")
                          if k in cfg)
        raise TFNameMappingError(
            f"shape mismatch between {where} and {cfg_where} ({sizes}): " + "; ".join(bad))

    # 3. what will be missing (before reading any data): tied copies are fine, the backbone is not
    keys = set(expected) if head == "all" else mlm_keys
    fused = {}
    for t in targets.values():
        if t.part is not None:
            fused.setdefault(t.hf_name, set()).add(t.part)
    provided = {t.hf_name for t in targets.values() if t.part is None}
    provided |= {k for k, got in fused.items() if got == {0, 1, 2}}
    computed = []
    if family == "roformer" and "roformer.encoder.embed_positions.weight" in keys:
        computed.append("roformer.encoder.embed_positions.weight")
    missing = sorted(k for k in keys if k not in provided and k not in computed and k not in tied)
    notes, allowed = [], set()
    if family == "nezha":
        allowed.add("bert.embeddings.position_embeddings.weight")
        notes.append("NEZHA: transformers has no NEZHA model; weights use BERT names, the "
                     "functional relative position encoding (max_relative_position="
                     f"{hf_config.nezha_max_relative_position}) is NOT represented and "
                     "bert.embeddings.position_embeddings is absent: a BertForMaskedLM built "
                     "from this is not equivalent to NEZHA")
    missing_core = [k for k in missing if k.startswith(_BACKBONE[family]) and "pooler" not in k
                    and k not in allowed]
    if missing_core:
        raise TFNameMappingError(
            f"{where}: weights {full_cls} needs but the checkpoint lacks: "
            + ", ".join(missing_core))
    if cfg.get("hidden_act", "gelu") == "gelu":
        notes.append("hidden_act 'gelu' taken as the exact erf GELU, as bert4keras and HF run it "
                     "(Google's original BERT code and CPM's Megatron code used the tanh "
                     "approximation: differences ~1e-3)")

    # 4. read and convert
    state: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, np.ndarray]] = {}
    for name, t in targets.items():
        if t.hf_name not in keys:  # head="mlm": pooler / NSP are not read
            continue
        arr = reader.get_tensor(name)
        if t.part is not None:
            parts.setdefault(t.hf_name, {})[t.part] = arr
        else:
            state[t.hf_name] = torch.from_numpy(np.ascontiguousarray(arr.T if t.transpose else arr))
    for hf_name, got in parts.items():
        if len(got) == 3:  # Conv1D fused [in, 3*out] (bias [3*out]) in q, k, v order
            state[hf_name] = torch.from_numpy(np.concatenate([got[0], got[1], got[2]], axis=-1))
    if computed:
        state[computed[0]] = _roformer_sinusoid(hf_config)

    mapped = {n: t.hf_name for n, t in targets.items()}
    unused = sorted(unknown + no_place + [n for n, h in mapped.items() if h not in mlm_keys])
    report = {
        "family": family,
        "architecture": mlm_cls,
        "state_dict_names": full_cls if head == "all" else mlm_cls,
        "checkpoint": where,
        "config_file": str(config_file) if config_file else None,
        "mapped": mapped,
        "unused": unused,
        "unknown": sorted(unknown),
        "ignored": list(reader.ignored),
        "missing": missing,
        "computed": computed,
        "tied": {k: v for k, v in tied.items()},
        "notes": notes,
    }
    return hf_config, state, report
