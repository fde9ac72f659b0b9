"""SujiConfig: one configuration for every model family, and its named presets.

Families differ only by switches on the one Transformer core (see `modeling.py`):

| switch                  | BERT      | RoFormer  | ALBERT            | GPT2 / CPM-LM |
|-------------------------|-----------|-----------|-------------------|---------------|
| position_embedding_type | learned   | rotary    | learned           | learned       |
| norm_placement          | post      | post      | post              | pre           |
| embedding_size          | = hidden  | any       | < hidden          | = hidden      |
| num_hidden_groups       | = layers  | = layers  | 1 (shared layer)  | = layers      |
| is_causal               | False     | False     | False             | True          |
| lm_head_transform       | True      | True      | True              | False         |

Attention variants combine freely with every family: `residual_attention` (RealFormer) and
`entropy_invariant_scale`. Mask kinds (bidirectional, causal, UniLM, prefix-LM, packed rows) are
chosen per call, see `attention.build_attention_mask`.

Initialization follows BERT: weights drawn from a normal distribution with std
`initializer_range` (0.02) truncated at two standard deviations (as TF's `truncated_normal`
that Google BERT used), biases zero, LayerNorm weights one.
"""

from __future__ import annotations

import copy
import json

from transformers import PretrainedConfig

POSITION_TYPES = ("learned", "rotary", "none")
NORM_PLACEMENTS = ("post", "pre")


class SujiConfig(PretrainedConfig):
    model_type = "suji"

    def __init__(
        self,
        vocab_size: int = 21128,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        embedding_size: int | None = None,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        position_embedding_type: str = "learned",
        rotary_base: float = 10000.0,
        norm_placement: str = "post",
        num_hidden_groups: int | None = None,
        is_causal: bool = False,
        lm_head_transform: bool = True,
        lm_head_bias: bool = True,
        pooler_activation: str | None = "tanh",
        classifier_pooling: str = "first",
        classifier_bias: bool = True,
        residual_attention: bool = False,
        entropy_invariant_scale: bool = False,
        entropy_base_length: int = 512,
        family: str = "bert",
        pad_token_id: int | None = 0,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        # Factorized embeddings (ALBERT, small RoFormers): tokens live in `embedding_size`
        # and are projected to `hidden_size`; the MLM head maps back to `embedding_size`.
        self.embedding_size = embedding_size or hidden_size
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.position_embedding_type = position_embedding_type
        self.rotary_base = rotary_base
        self.norm_placement = norm_placement
        # ALBERT cross-layer sharing: layer i uses parameter group i * groups // layers.
        self.num_hidden_groups = num_hidden_groups or num_hidden_layers
        self.is_causal = is_causal
        self.lm_head_transform = lm_head_transform
        self.lm_head_bias = lm_head_bias
        # None: no pooler (the classifier reads the chosen token's hidden state directly).
        self.pooler_activation = pooler_activation
        # "first" ([CLS], encoders) or "last" (last non-pad token, decoders such as GPT2).
        self.classifier_pooling = classifier_pooling
        self.classifier_bias = classifier_bias
        # RealFormer: each layer adds the previous layer's pre-softmax scores to its own.
        self.residual_attention = residual_attention
        # Entropy-invariant attention: scores scaled by log(n) / log(entropy_base_length) / sqrt(d),
        # n = number of keys the query may attend to ("从熵不变性看Attention的Scale操作").
        self.entropy_invariant_scale = entropy_invariant_scale
        self.entropy_base_length = entropy_base_length
        # Which public architecture the weights follow; a hint for export, never a code path.
        self.family = family
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_suji()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_suji(self) -> None:
        """Reject inconsistent settings at construction, not deep inside a forward pass."""
        if self.position_embedding_type not in POSITION_TYPES:
            raise ValueError(f"position_embedding_type must be one of {POSITION_TYPES}, got {self.position_embedding_type!r}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement must be one of {NORM_PLACEMENTS}, got {self.norm_placement!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.position_embedding_type == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head dimension, got {self.head_dim}")
        if not 1 <= self.num_hidden_groups <= self.num_hidden_layers or self.num_hidden_layers % self.num_hidden_groups:
            raise ValueError(
                f"num_hidden_groups ({self.num_hidden_groups}) must divide num_hidden_layers ({self.num_hidden_layers})"
            )
        if self.classifier_pooling not in ("first", "last"):
            raise ValueError(f"classifier_pooling must be 'first' or 'last', got {self.classifier_pooling!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SujiConfig":
        """Build a config from a named preset, e.g. `SujiConfig.from_preset("roformer-base", num_labels=3)`."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})

    @classmethod
    def from_preset_options(cls, name: str, overrides: str | dict = "", min_positions: int = 0,
                            **fixed) -> "SujiConfig":
        """What the scripts' ``--model_preset NAME --model_overrides JSON`` build: the preset, the JSON
        overrides (an object of config fields), then `fixed` (vocabulary size and pad id from the
        tokenizer). Learned position tables grow to `min_positions` (the run's sequence length)."""
        if isinstance(overrides, str):
            try:
                overrides = json.loads(overrides) if overrides.strip() else {}
            except json.JSONDecodeError as why:
                raise ValueError(f"--model_overrides is not valid JSON ({why.msg}): {overrides!r}") from None
        if not isinstance(overrides, dict):
            raise ValueError(f"--model_overrides must be a JSON object of config fields, got {overrides!r}")
        unknown = sorted(set(overrides) - set(cls().to_dict()) - {"num_labels", "id2label", "label2id"})
        if unknown:
            raise ValueError(f"--model_overrides: {unknown} are not SujiConfig fields")
        config = cls.from_preset(name, **{**overrides, **fixed})
        if config.position_embedding_type == "learned":
            config.max_position_embeddings = max(config.max_position_embeddings, min_positions)
        return config


# Each family's switches, written once. The presets below, the transformers import
# (`convert.hf.config_from_hf`) and the export check (`convert.hf.transformers_family`) all read this
# table. "=hidden_act" stands for the model's own activation (RoFormer's classification head applies
# hidden_act, not tanh, after its dense layer).
FAMILY_SWITCHES: dict[str, dict] = {
    # (post-LN families may be causal too: BertLMHeadModel, RoFormerForCausalLM)
    "bert": dict(position_embedding_type="learned", norm_placement="post", lm_head_transform=True, lm_head_bias=True,
                 pooler_activation="tanh", classifier_pooling="first", classifier_bias=True),
    "gpt2": dict(position_embedding_type="learned", norm_placement="pre", is_causal=True, type_vocab_size=0,
                 lm_head_transform=False, lm_head_bias=False, pooler_activation=None, classifier_pooling="last",
                 classifier_bias=False),
}
FAMILY_SWITCHES["roformer"] = {**FAMILY_SWITCHES["bert"], "position_embedding_type": "rotary",
                               "pooler_activation": "=hidden_act"}
FAMILY_SWITCHES["albert"] = dict(FAMILY_SWITCHES["bert"])  # + factorized embeddings and shared layer groups


def family_switches(family: str, hidden_act: str) -> dict:
    """The config fields that make a model of `family` (with `family` itself)."""
    switches = {k: (hidden_act if v == "=hidden_act" else v) for k, v in FAMILY_SWITCHES[family].items()}
    return {"family": family, **switches}


_BERT_BASE = dict(
    vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
    **family_switches("bert", "gelu"),
)
_ROFORMER = dict(**family_switches("roformer", "gelu"), max_position_embeddings=1536)
_ALBERT = dict(**family_switches("albert", "gelu_new"), hidden_act="gelu_new", num_hidden_groups=1,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_GPT2 = dict(**family_switches("gpt2", "gelu_new"), hidden_act="gelu_new", layer_norm_eps=1e-5,
             max_position_embeddings=1024)
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=128, vocab_size=128)

PRESETS: dict[str, dict] = {
    # Chinese BERT shapes (bert-base-chinese, chinese-roberta-wwm-ext share them).
    "bert-base": _BERT_BASE,
    "bert-large": {**_BERT_BASE, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "intermediate_size": 4096},
    # RoFormer: char-level (roformer_chinese_char_base) and word-level WoBERT-style vocab (50000 words).
    "roformer-base": {**_BERT_BASE, **_ROFORMER, "vocab_size": 50000},
    "roformer-char-base": {**_BERT_BASE, **_ROFORMER, "vocab_size": 12000},
    "roformer-small": {**_BERT_BASE, **_ROFORMER, "vocab_size": 50000, "hidden_size": 384, "num_hidden_layers": 6,
                       "num_attention_heads": 6, "intermediate_size": 1536},
    # ALBERT-zh shapes (albert_chinese_tiny / base).
    "albert-tiny": {**_BERT_BASE, **_ALBERT, "hidden_size": 312, "embedding_size": 128, "num_hidden_layers": 4,
                    "num_attention_heads": 12, "intermediate_size": 1248},
    "albert-base": {**_BERT_BASE, **_ALBERT, "embedding_size": 128},
    # GPT2 small with the Chinese BERT vocabulary (as uer/gpt2-chinese), and CPM-LM's 2.6B shape.
    "gpt2-small": {**_BERT_BASE, **_GPT2},
    "cpm-lm-2.6b": {**_BERT_BASE, **_GPT2, "family": "gpt2", "vocab_size": 30000, "hidden_size": 2560,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "intermediate_size": 10240},
    # Tiny presets for tests and smoke runs.
    "bert-tiny": {**_BERT_BASE, **_TINY},
    "roformer-tiny": {**_BERT_BASE, **_ROFORMER, **_TINY},
    "albert-tiny-test": {**_BERT_BASE, **_ALBERT, **_TINY, "embedding_size": 16, "num_hidden_layers": 3},
    "gpt2-tiny": {**_BERT_BASE, **_GPT2, **_TINY},
}
