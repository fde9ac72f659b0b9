"""The one Suji Transformer core and its heads, readable top to bottom.

Embeddings -> N x SujiLayer (post- or pre-LN, ALBERT-style groups may share parameters) ->
optional final norm -> head. Every family (BERT, RoFormer, ALBERT, GPT2/CPM-LM) is this file
configured by `SujiConfig`; nothing here is family-specific code.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .attention import (
    ATTENTION_FUNCTIONS,
    apply_rotary,
    build_attention_mask,
    default_scale,
    eager_attention,
    entropy_scale_factor,
    positions_from_documents,
    rotary_cos_sin,
)
from .configuration import SujiConfig


# transformers renamed the KV cache from `past_key_values` to `cache` in 5.24 (inputs of `forward`
# and `prepare_inputs_for_generation`, and the output field); the old name is accepted until 5.40.
# Suji takes both and writes its outputs under whichever field the installed version declares.
CACHE_OUTPUT_FIELD = (
    "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"
)


def resolve_cache(cache: Cache | None, past_key_values: Cache | None, kwargs: dict) -> Cache | None:
    """The one KV cache a forward was given, under the new name or the old one. A `Cache` that
    arrives under any other keyword is an error, not silently ignored: if transformers renames
    the argument again, generation must fail loudly instead of running without its cache."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache once, as `cache` (or the deprecated `past_key_values`), not both")
    stray = [key for key, value in kwargs.items() if isinstance(value, Cache)]
    if stray:
        import transformers

        raise TypeError(
            f"Suji received a KV cache as `{stray[0]}`, a name it does not know (transformers "
            f"{transformers.__version__}); it takes `cache` or `past_key_values`"
        )
    return cache if cache is not None else past_key_values


def keep_last_logits(hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """transformers' `logits_to_keep`: an int keeps the last N positions (0 keeps all), a 1D tensor
    those positions, a 2D integer tensor per-row positions, a 2D bool tensor a mask (flattened)."""
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.ndim == 2:
            if logits_to_keep.dtype == torch.bool:
                return hidden[logits_to_keep]
            return torch.take_along_dim(hidden, logits_to_keep[..., None], dim=1)
        return hidden[:, logits_to_keep]
    return hidden[:, -logits_to_keep:] if logits_to_keep else hidden


class SujiEmbeddings(nn.Module):
    """token (+ learned position) (+ token type) -> [LayerNorm] -> dropout -> [project E->H]."""

    def __init__(self, config: SujiConfig):
        super().__init__()
        E = config.embedding_size
        self.word_embeddings = nn.Embedding(config.vocab_size, E)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, E) if config.position_embedding_type == "learned" else None
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size else None
        # Post-LN models normalize the embedding sum; pre-LN models (GPT2) normalize inside each layer.
        self.norm = nn.LayerNorm(E, eps=config.layer_norm_eps) if config.norm_placement == "post" else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.project = nn.Linear(E, config.hidden_size) if E != config.hidden_size else None

    def forward(self, input_ids, token_type_ids, position_ids, inputs_embeds=None, last_position=None):
        """`last_position`: the largest position when the caller knows it on the host (no device sync)."""
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.position_embeddings is not None:
            if last_position is None:  # positions given by the user: read them (one host-device sync)
                last_position = int(position_ids.max())
            if last_position >= self.position_embeddings.num_embeddings:
                raise ValueError(
                    f"position {last_position} is beyond max_position_embeddings="
                    f"{self.position_embeddings.num_embeddings}; truncate the input"
                )
            x = x + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        x = self.dropout(x)
        return self.project(x) if self.project is not None else x


class SujiAttention(nn.Module):
    def __init__(self, config: SujiConfig):
        super().__init__()
        H = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.output = nn.Linear(H, H)
        self.dropout_p = config.attention_probs_dropout_prob
        self.scale = default_scale(self.head_dim)
        self.config = config

    def _heads(self, x):  # [B, L, H] -> [B, heads, L, head_dim]
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x, mask, rotary=None, cache: Cache | None = None, layer_idx: int = 0, previous_scores=None):
        """Returns (output, pre-softmax scores); the scores are None unless residual attention
        (RealFormer) needs them for the next layer."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:  # keys are cached after rotation, so cached positions stay put
            k, v = cache.update(k, v, layer_idx)
        if self.config.entropy_invariant_scale:
            # a per-query factor on the scores is a per-query factor on q: fused kernels still apply
            q = q * entropy_scale_factor(mask, k.shape[-2], self.config.entropy_base_length, q.device).to(q.dtype)
        if self.config.residual_attention:
            out, scores = eager_attention(q, k, v, mask, self.scale, self.dropout_p, self.training, previous_scores)
        else:
            attend = ATTENTION_FUNCTIONS.get(self.config._attn_implementation, ATTENTION_FUNCTIONS["sdpa"])
            out, scores = attend(q, k, v, mask, self.scale, self.dropout_p, self.training), None
            if isinstance(out, tuple):
                out = out[0]
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.output(out), scores


class SujiLayer(nn.Module):
    """Attention + feed-forward, each wrapped in a residual and a LayerNorm placed after (BERT,
    RoFormer, ALBERT) or before (GPT2) the sub-block."""

    def __init__(self, config: SujiConfig):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.attention = SujiAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.ffn_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def ffn(self, x):
        return self.ffn_out(self.activation(self.ffn_in(x)))

    def forward(self, x, mask, rotary=None, cache=None, layer_idx=0, previous_scores=None):
        if self.pre_norm:
            attended, scores = self.attention(self.attention_norm(x), mask, rotary, cache, layer_idx, previous_scores)
            x = x + self.dropout(attended)
            return x + self.dropout(self.ffn(self.ffn_norm(x))), scores
        attended, scores = self.attention(x, mask, rotary, cache, layer_idx, previous_scores)
        x = self.attention_norm(x + self.dropout(attended))
        return self.ffn_norm(x + self.dropout(self.ffn(x))), scores


class SujiEncoder(nn.Module):
    def __init__(self, config: SujiConfig):
        super().__init__()
        self.config = config
        # One module per parameter group; ALBERT shares one module across all layers.
        self.layers = nn.ModuleList(SujiLayer(config) for _ in range(config.num_hidden_groups))
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm_placement == "pre" else None
        )
        self.gradient_checkpointing = False

    def layer_for(self, i: int) -> SujiLayer:
        return self.layers[i * self.config.num_hidden_groups // self.config.num_hidden_layers]

    def untie(self) -> None:
        """Give every layer its own copy of its group's parameters (same outputs, independent updates)."""
        self.layers = nn.ModuleList(copy.deepcopy(self.layer_for(i)) for i in range(self.config.num_hidden_layers))
        self.config.num_hidden_groups = self.config.num_hidden_layers

    def forward(self, x, mask, rotary=None, cache=None, output_hidden_states=False):
        hidden_states = [x] if output_hidden_states else None
        scores = None  # RealFormer: pre-softmax scores handed from layer to layer
        for i in range(self.config.num_hidden_layers):
            layer = self.layer_for(i)
            if self.gradient_checkpointing and self.training:
                # transformers' gradient_checkpointing_enable() sets the flag and this function
                checkpoint = getattr(self, "_gradient_checkpointing_func", None) or torch.utils.checkpoint.checkpoint
                x, scores = checkpoint(layer, x, mask, rotary, cache, i, scores)
            else:
                x, scores = layer(x, mask, rotary, cache, i, scores)
            if output_hidden_states:
                hidden_states.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
            if output_hidden_states:
                hidden_states[-1] = x
        return x, hidden_states


class SujiPooler(nn.Module):
    def __init__(self, config: SujiConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.pooler_activation]

    def forward(self, x):
        return self.activation(self.dense(x))


class SujiLMHead(nn.Module):
    """[dense H->E, act, LayerNorm] -> decoder E->V (tied to the token embeddings) [+ bias]."""

    def __init__(self, config: SujiConfig):
        super().__init__()
        if config.lm_head_transform:
            self.transform = nn.Sequential()
            self.transform.add_module("dense", nn.Linear(config.hidden_size, config.embedding_size))
            self.transform.add_module("activation", ACT2FN[config.hidden_act])
            self.transform.add_module("norm", nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps))
            in_features = config.embedding_size
        else:
            self.transform = None
            in_features = config.hidden_size
        self.decoder = nn.Linear(in_features, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.lm_head_bias else None

    def forward(self, x):
        if self.transform is not None:
            x = self.transform(x)
        # bias inside the matmul (addmm): a separate add would re-read and re-write the [tokens, vocab] logits
        return F.linear(x, self.decoder.weight, self.bias)


def pick_tokens(hidden, how: str, input_ids=None, attention_mask=None, pad_token_id=None):
    """The hidden state a sequence classifier reads: [CLS] (first) or the last real token."""
    if how == "first":
        return hidden[:, 0]
    if input_ids is not None and pad_token_id is not None:
        real = input_ids != pad_token_id
    elif attention_mask is not None:
        real = attention_mask.bool()
    else:
        real = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (positions * real).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class SujiPreTrainedModel(PreTrainedModel):
    config_class = SujiConfig
    base_model_prefix = "suji"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["SujiLayer"]
    # Which transformers head class this model exports to (convert.hf.EXPORT_CLASSES); None: no counterpart.
    # An attribute, not the class name, so that subclasses export as their parent does.
    export_kind: str | None = None

    @torch.no_grad()
    def _init_weights(self, module):
        # BERT's initializer: normal(0, std) truncated at 2 std, zero biases, unit LayerNorm.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SujiLMHead) and module.bias is not None:
            init.zeros_(module.bias)

    def untie_layers(self) -> None:
        """ALBERT: turn a cross-layer-shared model into an equivalent unshared one, so that each
        layer can be finetuned on its own (outputs are identical until the first update)."""
        self.base_model.encoder.untie()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict_weights: bool = True, **kwargs):
        """Load a Suji checkpoint, or convert on load a transformers (bert / roformer / albert /
        gpt2) checkpoint directory. Weights the model needs but the checkpoint lacks raise one
        error listing them (`strict_weights=False` turns it into a report); a freshly added task
        head (classifier, pooler) is reported, never silently initialized."""
        from .convert.loading import load_pretrained

        return load_pretrained(cls, pretrained_model_name_or_path, model_args, strict_weights, kwargs)


class SujiModel(SujiPreTrainedModel):
    export_kind = "model"

    def __init__(self, config: SujiConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = SujiEmbeddings(config)
        self.encoder = SujiEncoder(config)
        self.pooler = SujiPooler(config) if add_pooling_layer and config.pooler_activation else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        mask_kind: str | None = None,
        document_ids: torch.LongTensor | None = None,
        prefix_lengths: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        cache_position: torch.LongTensor | None = None,
        **kwargs,
    ):
        """`mask_kind`: bidirectional | causal | unilm (segments from token_type_ids) | prefix (the
        first `prefix_lengths[b]` tokens of row b see each other, the rest is causal). `document_ids`
        packs several documents per row: attention stays inside each document and positions restart
        at every document start. The KV cache comes as `cache` (transformers >= 5.24) or
        `past_key_values` (earlier); `cache_position` (older `generate()`) only confirms the offset."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cache = resolve_cache(cache, past_key_values, kwargs)
        batch, length = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        mask_kind = mask_kind or ("causal" if self.config.is_causal else "bidirectional")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if cache_position is not None and cache_position.numel() and int(cache_position.reshape(-1)[0]) != past:
            raise ValueError(f"cache_position starts at {int(cache_position.reshape(-1)[0])} but the cache holds "
                             f"{past} positions")

        last_position = None
        if position_ids is None:
            last_position = past + length - 1  # packed documents restart at 0: never beyond it either
            if document_ids is not None:
                position_ids = positions_from_documents(document_ids)
            else:
                position_ids = torch.arange(past, past + length, device=device).expand(batch, -1)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, length, dtype=torch.long, device=device)
        if attention_mask is not None and attention_mask.shape[-1] == length and past:
            attention_mask = F.pad(attention_mask, (past, 0), value=1)
        segments = token_type_ids
        if mask_kind == "prefix" and not past:
            if prefix_lengths is None:
                raise ValueError("mask_kind='prefix' needs prefix_lengths (one length per row)")
            segments = (torch.arange(length, device=device)[None, :] >= prefix_lengths.view(-1, 1)).long()
        mask = build_attention_mask(mask_kind, length, past + length, attention_mask, segment_ids=segments,
                                    document_ids=document_ids, device=device)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, last_position)
        rotary = None
        if self.config.position_embedding_type == "rotary":
            rotary = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rotary_base, x.dtype)
        x, hidden_states = self.encoder(x, mask, rotary, cache, bool(output_hidden_states))
        pooled = None
        if self.pooler is not None:
            pooled = self.pooler(pick_tokens(x, self.config.classifier_pooling, input_ids, attention_mask,
                                             self.config.pad_token_id))
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            **{CACHE_OUTPUT_FIELD: cache if use_cache else None},
        )


class _SujiWithLMHead(SujiPreTrainedModel):
    """Shared body of the three language-model heads: backbone + tied LM head."""

    _tied_weights_keys = {"lm_head.decoder.weight": "suji.embeddings.word_embeddings.weight"}

    def __init__(self, config: SujiConfig):
        super().__init__(config)
        self.suji = SujiModel(config, add_pooling_layer=False)
        self.lm_head = SujiLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings


def masked_head_rows(n: int) -> int:
    """The rows the masked-only MLM head runs on for n predicted tokens: n rounded up to one of 8 sizes per
    power of two, and to a multiple of 64 (at most 1/8 more rows from 512 on), so a step's [rows, vocab]
    buffers take one of a few sizes however the number of masked tokens varies."""
    step = max(64, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step


class SujiForMaskedLM(_SujiWithLMHead):
    export_kind = "masked_lm"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, document_ids=None, output_hidden_states=None, return_dict=None,
                masked_logits_only: bool = False, **kwargs):
        """With `labels` and `masked_logits_only=True` the LM head runs only where a token is predicted
        (labels != -100) and `logits` is [n_predicted, vocab]: the vocabulary projection is the
        costliest part of the head and pretraining predicts ~15% of positions.

        The head runs on `masked_head_rows(n_predicted)` rows (the extra rows are zeros labelled -100: no
        loss, no gradient). The number of masked tokens changes every step, and [rows, vocab] buffers of a
        new size every step fragment glibc's heap on CPU: a process's RSS grew from 762 to 1273 MB over 2,000
        steps (batch 32 x 128, measured), and stays flat with the rounding."""
        out = self.suji(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        mask_kind="bidirectional", document_ids=document_ids, output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state
        kept = None
        if labels is not None and masked_logits_only:
            predicted = labels != -100
            hidden, labels = hidden[predicted], labels[predicted]
            kept = labels.shape[0]
            pad = masked_head_rows(kept) - kept
            hidden, labels = F.pad(hidden, (0, 0, 0, pad)), F.pad(labels, (0, pad), value=-100)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:  # -100 marks positions that are not predicted
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1), ignore_index=-100)
        if kept is not None:
            logits = logits[:kept]
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class SujiForCausalLM(_SujiWithLMHead, GenerationMixin):
    mask_kind = "causal"
    export_kind = "causal_lm"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, cache=None, use_cache=None, labels=None, document_ids=None,
                prefix_lengths=None, output_hidden_states=None, return_dict=None,
                logits_to_keep: int | torch.Tensor = 0, past_key_values=None, cache_position=None, **kwargs):
        """`prefix_lengths` switches to a prefix-LM mask (the prompt's first tokens see each other);
        `document_ids` packs several documents per row. The KV cache: `cache` (transformers >= 5.24)
        or `past_key_values` (earlier 5.x); the output carries it under the installed version's name."""
        mask_kind = "prefix" if prefix_lengths is not None else self.mask_kind
        cache = resolve_cache(cache, past_key_values, kwargs)
        out = self.suji(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        cache=cache, use_cache=use_cache, mask_kind=mask_kind,
                        document_ids=document_ids, prefix_lengths=prefix_lengths,
                        output_hidden_states=output_hidden_states, cache_position=cache_position)
        # generate() asks only for the last position's logits (logits_to_keep=1)
        hidden = keep_last_logits(out.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:  # token t predicts token t+1
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states,
            **{CACHE_OUTPUT_FIELD: getattr(out, CACHE_OUTPUT_FIELD)},
        )


class SujiForUniLM(SujiForCausalLM):
    """Seq2seq inside one bidirectional encoder (UniLM): token_type_ids are 0 on the source and
    1 on the target; the source attends to itself, the target to the source and its own past.
    Train with `labels = unilm_labels(input_ids, token_type_ids)`; generate from a source prompt."""

    mask_kind = "unilm"
    export_kind = "unilm"  # UniLM weights are plain MLM weights (the mask is not a parameter)

    @staticmethod
    def unilm_labels(input_ids, token_type_ids, attention_mask=None):
        """Labels that score only target tokens (segment 1, not padding)."""
        keep = token_type_ids.bool()
        if attention_mask is not None:
            keep &= attention_mask.bool()
        return input_ids.masked_fill(~keep, -100)

    # Everything generated belongs to the target segment (1), whatever the prompt ended with. The prompt
    # gets segment 0 when no token_type_ids are given, and each generated column is appended as 1
    # (transformers repeats the last column). transformers then slices the columns of the tokens it
    # feeds, so the segments are right with the cache and without it (the full sequence each step).
    def generate(self, inputs=None, **kwargs):
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        if ids is not None and kwargs.get("token_type_ids") is None:
            kwargs["token_type_ids"] = torch.zeros_like(ids)
        return super().generate(inputs, **kwargs)

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder,
                                                                   num_new_tokens)
        if model_kwargs.get("token_type_ids") is not None:
            model_kwargs["token_type_ids"][:, -num_new_tokens:] = 1
        return model_kwargs


def classification_loss(logits, labels, config) -> torch.Tensor:
    """HF's convention: regression for 1 label, CE for int labels, BCE for multi-hot float labels."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1)) if config.num_labels == 1 else \
            F.mse_loss(logits.float(), labels.float())
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels).float(), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class SujiForSequenceClassification(SujiPreTrainedModel):
    export_kind = "sequence_classification"

    def __init__(self, config: SujiConfig):
        super().__init__(config)
        self.suji = SujiModel(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels, bias=config.classifier_bias)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, document_ids=None, output_hidden_states=None, return_dict=None,
                **kwargs):
        out = self.suji(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        document_ids=document_ids, output_hidden_states=output_hidden_states)
        x = out.pooler_output
        if x is None:  # no pooler (GPT2): read the picked token directly
            x = pick_tokens(out.last_hidden_state, self.config.classifier_pooling, input_ids, attention_mask,
                            self.config.pad_token_id)
        logits = self.classifier(self.dropout(x))
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class SujiForTokenClassification(SujiPreTrainedModel):
    export_kind = "token_classification"

    def __init__(self, config: SujiConfig):
        super().__init__(config)
        self.suji = SujiModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, document_ids=None, output_hidden_states=None, return_dict=None,
                **kwargs):
        out = self.suji(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        document_ids=document_ids, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.num_labels).float(), labels.view(-1), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
