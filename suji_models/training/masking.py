"""Masked-LM corruption (BERT's 80/10/10), token-level or whole-word."""

from __future__ import annotations

import torch


def mask_for_mlm(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    maskable: torch.Tensor,
    word_ids: torch.Tensor | None = None,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
):
    """Return (corrupted inputs, labels with -100 where nothing is predicted).

    `maskable` is False on special tokens and padding. With `word_ids` ([batch, length], the same id
    on every token of one word, -1 on unmaskable tokens) whole words are chosen with probability
    `mask_prob` and all their tokens masked together (Chinese whole-word masking). A chosen token is
    replaced by [MASK] 80% of the time, a random token 10%, and kept 10%.
    """
    if word_ids is None:
        chosen = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & maskable
    else:
        # One coin per word: draw per (row, word id) and gather it back onto the tokens.
        n_words = int(word_ids.max().clamp(min=0)) + 1
        coins = torch.rand(input_ids.shape[0], n_words, generator=generator) < mask_prob
        chosen = coins.gather(1, word_ids.clamp(min=0)) & maskable & (word_ids >= 0)
    labels = input_ids.masked_fill(~chosen, -100)
    roll = torch.rand(input_ids.shape, generator=generator)
    corrupted = input_ids.clone()
    corrupted[chosen & (roll < 0.8)] = mask_token_id
    random_slot = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted[random_slot] = torch.randint(vocab_size, input_ids.shape, generator=generator)[random_slot]
    return corrupted, labels
