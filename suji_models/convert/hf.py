"""Convert between transformers' bert / roformer / albert / gpt2 checkpoints and Suji.

Each family is a table of name templates `(transformers name, suji name)`, read in both
directions: `{i}` is a layer (or ALBERT group) index and `{p}` is `weight` or `bias`. GPT2's
Conv1D stores kernels [in, out] and fuses q/k/v; those rules carry a transform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import transformers
from transformers.utils import logging

from ..configuration import family_switches

logger = logging.get_logger(__name__)

FAMILIES = ("bert", "roformer", "albert", "gpt2")
# Where each family's backbone lives inside its head models (BertForMaskedLM.bert, ...).
BASE_PREFIX = {"bert": "bert", "roformer": "roformer", "albert": "albert", "gpt2": "transformer"}

_EMBEDDINGS = [
    ("embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
    ("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
    ("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.weight"),
    ("embeddings.LayerNorm.{p}", "embeddings.norm.{p}"),
]
_BERT_LAYER = [
    ("encoder.layer.{i}.attention.self.query.{p}", "encoder.layers.{i}.attention.query.{p}"),
    ("encoder.layer.{i}.attention.self.key.{p}", "encoder.layers.{i}.attention.key.{p}"),
    ("encoder.layer.{i}.attention.self.value.{p}", "encoder.layers.{i}.attention.value.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "encoder.layers.{i}.attention.output.{p}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "encoder.layers.{i}.attention_norm.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "encoder.layers.{i}.ffn_in.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "encoder.layers.{i}.ffn_out.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "encoder.layers.{i}.ffn_norm.{p}"),
]
# ALBERT groups hold one layer each in the checkpoints we support (inner_group_num == 1).
_ALBERT_LAYER = [
    (hf.replace("encoder.layer.{i}.", "encoder.albert_layer_groups.{i}.albert_layers.0."), suji)
    for hf, suji in [
        ("encoder.layer.{i}.attention.query.{p}", "encoder.layers.{i}.attention.query.{p}"),
        ("encoder.layer.{i}.attention.key.{p}", "encoder.layers.{i}.attention.key.{p}"),
        ("encoder.layer.{i}.attention.value.{p}", "encoder.layers.{i}.attention.value.{p}"),
        ("encoder.layer.{i}.attention.dense.{p}", "encoder.layers.{i}.attention.output.{p}"),
        ("encoder.layer.{i}.attention.LayerNorm.{p}", "encoder.layers.{i}.attention_norm.{p}"),
        ("encoder.layer.{i}.ffn.{p}", "encoder.layers.{i}.ffn_in.{p}"),
        ("encoder.layer.{i}.ffn_output.{p}", "encoder.layers.{i}.ffn_out.{p}"),
        ("encoder.layer.{i}.full_layer_layer_norm.{p}", "encoder.layers.{i}.ffn_norm.{p}"),
    ]
]
_MLM_HEAD = [
    ("cls.predictions.transform.dense.{p}", "lm_head.transform.dense.{p}"),
    ("cls.predictions.transform.LayerNorm.{p}", "lm_head.transform.norm.{p}"),
    ("cls.predictions.decoder.weight", "lm_head.decoder.weight"),
    ("cls.predictions.bias", "lm_head.bias"),
]

# Backbone rules (names relative to the backbone) and head rules (full names in the head model).
BASE_RULES = {
    "bert": _EMBEDDINGS + _BERT_LAYER + [("pooler.dense.{p}", "pooler.dense.{p}")],
    "roformer": [r for r in _EMBEDDINGS if "position" not in r[0]]
    + [("embeddings_project.{p}", "embeddings.project.{p}")]
    + _BERT_LAYER,
    "albert": _EMBEDDINGS
    + [("encoder.embedding_hidden_mapping_in.{p}", "embeddings.project.{p}")]
    + _ALBERT_LAYER
    + [("pooler.{p}", "pooler.dense.{p}")],
    "gpt2": [
        ("wte.weight", "embeddings.word_embeddings.weight"),
        ("wpe.weight", "embeddings.position_embeddings.weight"),
        ("h.{i}.ln_1.{p}", "encoder.layers.{i}.attention_norm.{p}"),
        ("h.{i}.attn.c_proj.{p}", "encoder.layers.{i}.attention.output.{p}"),
        ("h.{i}.ln_2.{p}", "encoder.layers.{i}.ffn_norm.{p}"),
        ("h.{i}.mlp.c_fc.{p}", "encoder.layers.{i}.ffn_in.{p}"),
        ("h.{i}.mlp.c_proj.{p}", "encoder.layers.{i}.ffn_out.{p}"),
        ("ln_f.{p}", "encoder.final_norm.{p}"),
    ],
}
HEAD_RULES = {
    "bert": _MLM_HEAD,
    "roformer": _MLM_HEAD,
    "albert": [
        ("predictions.dense.{p}", "lm_head.transform.dense.{p}"),
        ("predictions.LayerNorm.{p}", "lm_head.transform.norm.{p}"),
        ("predictions.decoder.weight", "lm_head.decoder.weight"),
        ("predictions.bias", "lm_head.bias"),
    ],
    "gpt2": [("lm_head.weight", "lm_head.decoder.weight")],
}
# Sequence classifiers that transformers names differently from the token classifier
# (`classifier`). RoFormer's is dense+act on [CLS] then out_proj: Suji's pooler + classifier.
SEQUENCE_CLASSIFIER_RULES = {
    "roformer": [("classifier.dense.{p}", "suji.pooler.dense.{p}"), ("classifier.out_proj.{p}", "classifier.{p}")],
    "gpt2": [("score.weight", "classifier.weight")],
}
_CLASSIFIER = [("classifier.{p}", "classifier.{p}")]


def head_rules(family: str, sequence_classifier: bool = True):
    """Head name rules; importing uses all of them (names are unambiguous in that direction),
    exporting picks the sequence- or token-classifier naming by the model's head."""
    seq = SEQUENCE_CLASSIFIER_RULES.get(family, []) if sequence_classifier else []
    return HEAD_RULES[family] + seq + _CLASSIFIER


# Names we know and deliberately do not load: duplicated tied biases, NSP / SOP heads, buffers
# that are recomputed (RoFormer's sinusoid table, GPT2's causal-mask buffers, position_ids).
IGNORED = [
    r"(cls\.)?predictions\.decoder\.bias",
    r"cls\.seq_relationship\..*",
    r"sop_classifier\..*",
    r"((bert|roformer|albert)\.)?embeddings\.position_ids",
    r"(roformer\.)?encoder\.embed_positions\.weight",
    r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",
]
# GPT2 Conv1D kernels are [in, out]; q, k and v are fused in c_attn.
_GPT2_TRANSPOSED = re.compile(r"h\.\d+\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
_GPT2_QKV = re.compile(r"h\.(\d+)\.attn\.c_attn\.(weight|bias)$")


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern + "$")


def _rename(name: str, rules, reverse: bool = False) -> str | None:
    for hf, suji in rules:
        src, dst = (suji, hf) if reverse else (hf, suji)
        m = _regex(src).match(name)
        if m:
            return dst.format(**m.groupdict())
    return None


@dataclass
class ConversionResult:
    state_dict: dict[str, torch.Tensor]
    ignored: list[str] = field(default_factory=list)  # known names deliberately not loaded
    unknown: list[str] = field(default_factory=list)  # names no rule knows: an error when loading


def hf_to_suji_state_dict(hf_state: dict, family: str, suji_prefix: str = "suji.") -> ConversionResult:
    """transformers state dict -> Suji names. Backbone keys get `suji_prefix` ("" for SujiModel)."""
    prefix = BASE_PREFIX[family] + "."
    result = ConversionResult({})
    for name, tensor in hf_state.items():
        base_name = name[len(prefix):] if name.startswith(prefix) else name
        if family == "gpt2" and (m := _GPT2_QKV.search(base_name)):
            i, p = m.groups()
            w = tensor.t() if p == "weight" else tensor
            for part, chunk in zip(("query", "key", "value"), w.chunk(3, dim=0)):
                result.state_dict[f"{suji_prefix}encoder.layers.{i}.attention.{part}.{p}"] = chunk.contiguous()
            continue
        target = _rename(base_name, BASE_RULES[family])
        if target is not None:
            target = suji_prefix + target
            if family == "gpt2" and _GPT2_TRANSPOSED.search(base_name):
                tensor = tensor.t().contiguous()
        elif not name.startswith(prefix) and (target := _rename(name, head_rules(family))) is not None:
            if target.startswith("suji."):
                target = suji_prefix + target[len("suji."):]
        elif any(re.fullmatch(p, name) for p in IGNORED):
            result.ignored.append(name)
            continue
        else:
            result.unknown.append(name)
            continue
        result.state_dict[target] = tensor
    return result


def suji_to_hf_state_dict(state: dict, family: str, hf_prefix: str, rules=None):
    """Suji state dict -> (transformers state dict, Suji names with no transformers counterpart).
    `hf_prefix` is e.g. "bert." for head models, "" for a bare backbone."""
    rules = head_rules(family) if rules is None else rules
    out, qkv, unmapped = {}, {}, []
    for name, tensor in state.items():
        base_name = name[len("suji."):] if name.startswith("suji.") else name
        if family == "gpt2" and (m := re.fullmatch(r"encoder\.layers\.(\d+)\.attention\.(query|key|value)\.(weight|bias)", base_name)):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = tensor
            continue
        target = _rename(base_name, BASE_RULES[family], reverse=True) if name.startswith("suji.") or not hf_prefix else None
        if target is not None:
            if family == "gpt2" and _GPT2_TRANSPOSED.search(target):
                tensor = tensor.t()
            target = hf_prefix + target
        else:
            target = _rename(name, rules, reverse=True)
            if target is None:
                unmapped.append(name)
                continue
        out[target] = tensor.contiguous()
    for (i, p), parts in qkv.items():
        fused = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        out[f"{hf_prefix}h.{i}.attn.c_attn.{p}"] = (fused.t() if p == "weight" else fused).contiguous()
    return out, unmapped


# ----------------------------------------------------------------------------- configs

_COMMON_KEYS = ("num_labels", "id2label", "label2id", "problem_type", "pad_token_id", "bos_token_id", "eos_token_id")


def config_from_hf(hf_config, **overrides):
    """transformers config (bert / roformer / albert / gpt2) -> SujiConfig, refusing what Suji can't express."""
    from ..configuration import SujiConfig

    family = hf_config.model_type
    common = {k: getattr(hf_config, k) for k in _COMMON_KEYS if hasattr(hf_config, k)}
    common["id2label"] = {int(k): v for k, v in hf_config.id2label.items()}
    if family == "gpt2":
        for flag, ok in [("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)]:
            if getattr(hf_config, flag, ok) != ok:
                raise ValueError(f"GPT2 checkpoints with {flag}={not ok} are not supported")
        kw = dict(
            vocab_size=hf_config.vocab_size, hidden_size=hf_config.n_embd,
            num_hidden_layers=hf_config.n_layer, num_attention_heads=hf_config.n_head,
            intermediate_size=hf_config.n_inner or 4 * hf_config.n_embd, hidden_act=hf_config.activation_function,
            hidden_dropout_prob=hf_config.resid_pdrop, attention_probs_dropout_prob=hf_config.attn_pdrop,
            max_position_embeddings=hf_config.n_positions, layer_norm_eps=hf_config.layer_norm_epsilon,
            initializer_range=hf_config.initializer_range,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", True),
            **family_switches("gpt2", hf_config.activation_function),
        )
    elif family in ("bert", "roformer", "albert"):
        if getattr(hf_config, "position_embedding_type", "absolute") not in ("absolute", None):
            raise ValueError(f"{family} position_embedding_type={hf_config.position_embedding_type!r} is not supported")
        if getattr(hf_config, "add_cross_attention", False):
            raise ValueError(f"{family} checkpoints with cross-attention are not supported")
        kw = dict(
            vocab_size=hf_config.vocab_size, hidden_size=hf_config.hidden_size,
            num_hidden_layers=hf_config.num_hidden_layers, num_attention_heads=hf_config.num_attention_heads,
            intermediate_size=hf_config.intermediate_size, hidden_act=hf_config.hidden_act,
            hidden_dropout_prob=hf_config.hidden_dropout_prob,
            attention_probs_dropout_prob=hf_config.attention_probs_dropout_prob,
            max_position_embeddings=hf_config.max_position_embeddings, type_vocab_size=hf_config.type_vocab_size,
            layer_norm_eps=hf_config.layer_norm_eps, initializer_range=hf_config.initializer_range,
            embedding_size=getattr(hf_config, "embedding_size", None) or hf_config.hidden_size,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", True),
            **family_switches(family, hf_config.hidden_act),
        )
        kw["is_causal"] = bool(getattr(hf_config, "is_decoder", False))  # BertLMHeadModel / RoFormerForCausalLM
        if family == "roformer" and getattr(hf_config, "rotary_value", False):
            raise ValueError("RoFormer checkpoints with rotary_value=True are not supported")
        if family == "albert":
            if hf_config.inner_group_num != 1:
                raise ValueError(f"ALBERT inner_group_num={hf_config.inner_group_num} is not supported (only 1)")
            kw.update(num_hidden_groups=hf_config.num_hidden_groups)
    else:
        raise ValueError(f"cannot convert transformers model_type {family!r}; supported: {', '.join(FAMILIES)}")
    return SujiConfig(**{**kw, **common, **overrides})


# Settings added by later features that plain transformers cannot express: (attribute, neutral value, what).
SUJI_ONLY_FEATURES = [
    ("residual_attention", False, "RealFormer residual attention scores"),
    ("entropy_invariant_scale", False, "entropy-invariant attention scale"),
]


def transformers_family(config) -> str:
    """The transformers architecture that expresses `config` exactly, or ValueError naming why none does."""
    blockers = [what for attr, neutral, what in SUJI_ONLY_FEATURES if getattr(config, attr, neutral) != neutral]
    pos, norm = config.position_embedding_type, config.norm_placement
    shared = config.num_hidden_groups != config.num_hidden_layers
    factorized = config.embedding_size != config.hidden_size
    if pos == "none":
        blockers.append("no position embeddings (position_embedding_type='none')")
    if norm == "pre":
        family = "gpt2"
        checks = [(not factorized and not shared, "factorized or shared layers in a GPT2-style model")]
    else:
        family = "roformer" if pos == "rotary" else ("albert" if shared or factorized or config.family == "albert" else "bert")
        checks = [(config.type_vocab_size > 0, "no token type embeddings in a post-LN model"),
                  (family != "roformer" or not shared, "shared layers with rotary positions")]
    for key, want in family_switches(family, config.hidden_act).items():
        have = getattr(config, key)
        if key == "family" or (key == "pooler_activation" and family == "roformer" and have is None):
            continue  # `family` is a hint; a RoFormer without pooler exports (RoFormerModel has none)
        checks.append((have == want, f"{key}={have!r} (transformers {family} needs {want!r})"))
    blockers += [what for ok, what in checks if not ok]
    if blockers:
        raise ValueError("cannot export to plain transformers: the config uses " + "; ".join(blockers))
    return family


def config_to_hf(config, family: str):
    common = {k: getattr(config, k) for k in _COMMON_KEYS}
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=config.vocab_size, n_embd=config.hidden_size, n_layer=config.num_hidden_layers,
            n_head=config.num_attention_heads, n_inner=config.intermediate_size,
            activation_function=config.hidden_act, resid_pdrop=config.hidden_dropout_prob,
            embd_pdrop=config.hidden_dropout_prob, attn_pdrop=config.attention_probs_dropout_prob,
            n_positions=config.max_position_embeddings, layer_norm_epsilon=config.layer_norm_eps,
            initializer_range=config.initializer_range, tie_word_embeddings=config.tie_word_embeddings, **common,
        )
    kw = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act, hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps, initializer_range=config.initializer_range,
        is_decoder=config.is_causal, tie_word_embeddings=config.tie_word_embeddings, **common,
    )
    if family == "bert":
        return transformers.BertConfig(**kw)
    if family == "roformer":
        return transformers.RoFormerConfig(embedding_size=config.embedding_size, **kw)
    return transformers.AlbertConfig(
        embedding_size=config.embedding_size, num_hidden_groups=config.num_hidden_groups, inner_group_num=1,
        classifier_dropout_prob=config.hidden_dropout_prob, **kw,
    )


# A model's `export_kind` -> transformers class per family (None: the family has no such head).
EXPORT_CLASSES = {
    "model": {"bert": "BertModel", "roformer": "RoFormerModel", "albert": "AlbertModel", "gpt2": "GPT2Model"},
    "masked_lm": {"bert": "BertForMaskedLM", "roformer": "RoFormerForMaskedLM", "albert": "AlbertForMaskedLM"},
    # UniLM weights are plain MLM weights (the mask is not a parameter): export them as such.
    "unilm": {"bert": "BertForMaskedLM", "roformer": "RoFormerForMaskedLM", "albert": "AlbertForMaskedLM"},
    "causal_lm": {"bert": "BertLMHeadModel", "roformer": "RoFormerForCausalLM", "gpt2": "GPT2LMHeadModel"},
    "sequence_classification": {
        "bert": "BertForSequenceClassification", "roformer": "RoFormerForSequenceClassification",
        "albert": "AlbertForSequenceClassification", "gpt2": "GPT2ForSequenceClassification",
    },
    "token_classification": {
        "bert": "BertForTokenClassification", "roformer": "RoFormerForTokenClassification",
        "albert": "AlbertForTokenClassification", "gpt2": "GPT2ForTokenClassification",
    },
}
# Weights transformers builds itself and that Suji does not store.
_HF_DERIVED = re.compile(r".*(embed_positions\.weight|position_ids|decoder\.bias|attn\.bias|masked_bias)$")


def export_to_transformers(model, save_directory, **save_kwargs):
    """Write `model` as a plain transformers checkpoint (no Suji code needed to load it).

    Raises ValueError naming the feature when the config uses something transformers lacks.
    """
    family = transformers_family(model.config)
    kind = getattr(model, "export_kind", None)
    hf_name = EXPORT_CLASSES.get(kind, {}).get(family)
    if hf_name is None:
        raise ValueError(f"transformers has no {family} counterpart of {type(model).__name__} (export_kind {kind!r})")
    hf_config = config_to_hf(model.config, family)
    if kind in ("unilm", "causal_lm"):
        hf_config.is_decoder = kind == "causal_lm"
    hf_model = getattr(transformers, hf_name)(hf_config)
    prefix = "" if kind == "model" else BASE_PREFIX[family] + "."
    rules = head_rules(family, sequence_classifier=kind == "sequence_classification")
    state, unmapped = suji_to_hf_state_dict(model.state_dict(), family, prefix, rules)
    # RoFormerModel has no pooler: a bare RoFormer backbone's pooler is the only thing left behind.
    dropped = [k for k in unmapped if family == "roformer" and kind == "model" and k.startswith("pooler.")]
    if set(unmapped) - set(dropped):
        raise ValueError(f"transformers {hf_name} has no place for Suji weights {sorted(set(unmapped) - set(dropped))}")
    if dropped:
        logger.warning("RoFormerModel has no pooler; not exported: %s", ", ".join(dropped))
    result = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not _HF_DERIVED.match(k)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"export mapping incomplete: missing {missing}, unexpected {result.unexpected_keys}")
    hf_model.tie_weights()
    hf_model.save_pretrained(save_directory, **save_kwargs)
    return save_directory
