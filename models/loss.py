"""The next-token cross-entropy of logits computed outside ``HizooForCausalLM.forward``.

The model's own loss is transformers' causal-LM loss (``self.loss_function``, i.e. ``ForCausalLMLoss``, returned as
``ce_loss``). Code that forms logits itself (the stream ablation of ``analysis/streams.py``, which re-reduces the
last streams) or needs a sum over tokens (the study's token-weighted validation CE) calls the same function here,
so every CE hizoo reports is computed one way.
"""

from __future__ import annotations

from torch import Tensor
from transformers.loss.loss_utils import ForCausalLMLoss

from .inputs import IGNORE_INDEX

REDUCTIONS = ("mean", "sum")


def next_token_cross_entropy(logits: Tensor, input_ids: Tensor, reduction: str = "mean",
                             ignore_index: int = IGNORE_INDEX) -> Tensor:
    """CE of logits [B, S, V] at positions 0..S-2 against the next tokens input_ids[:, 1:] [B, S] (positions whose
    next token is ``ignore_index`` are not targets), in fp32. ``reduction``: "mean" over the targets (what the
    model's ``ce_loss`` is; ``exp`` of it is the perplexity) or "sum" (for token-weighted means over batches).

    transformers' ``ForCausalLMLoss`` sums and divides by ``num_items_in_batch`` when that is given, so "sum"
    passes 1."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not allowed; choose one of {', '.join(map(repr, REDUCTIONS))}")
    return ForCausalLMLoss(logits.contiguous(), input_ids, logits.shape[-1],
                           num_items_in_batch=1 if reduction == "sum" else None, ignore_index=ignore_index)
