"""The model's inputs checked where they enter (``HizooModel.forward``), each bad one a ``ValueError`` naming the
argument, its shape or values, and what is expected.

Cost: shapes and dtypes are host metadata, checked for free. Values (token ids in the vocabulary, a mask of 0/1,
position ids in range, labels in the vocabulary or -100 with at least one target) need the device: all of them are
reduced on the device to one small boolean vector and read back in a single host sync per forward, the one the
token-id range check always cost. That same sync tells whether the mask has padding, which the attention-mask
builder would otherwise read back separately, so a forward with a mask syncs once instead of twice.

Loss without targets: the loss shifts labels by one (position t predicts label t+1), so a length-1 sequence, or
labels that are -100 at every position after the first, leave no token to average over. transformers'
``ForCausalLMLoss`` then returns nan (a mean over zero tokens); hizoo raises instead, since a nan loss would only
surface later as a non-finite training step. With ``num_items_in_batch`` (the HF Trainer's target count of the
whole accumulation window) the loss is a sum over this batch divided by that count, well defined (0) for a batch
without targets, so such a batch is accepted. ``shift_labels`` (labels already shifted, e.g. by sequence
parallelism) are checked like labels; every position of them can be a target, so one token is enough.

Masks already prepared for the attention kernel (4-D [B, 1 or H, S, kv] tensors, flex ``BlockMask``; ``generate``
builds them for a static cache) are accepted as they are: only their batch and query sizes are checked.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100  # labels at this value are not targets (as in transformers and F.cross_entropy)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _require_tensor(name: str, value) -> None:
    if not torch.is_tensor(value):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(value).__name__}")


def _require_integer(name: str, t: Tensor, what: str) -> None:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of {what}; got dtype {t.dtype}")


def _some_values(t: Tensor, bad: Tensor) -> list:
    return t[bad].unique()[:8].tolist()


def check_inputs(config, *, input_ids: Tensor | None, inputs_embeds: Tensor | None, attention_mask: Tensor | None,
                 position_ids: Tensor | None, labels: Tensor | None, past_len: int, shift_labels: Tensor | None = None,
                 ignore_index: int = IGNORE_INDEX, num_items_in_batch=None) -> bool | None:
    """Validate one forward's inputs against ``config`` (``past_len`` tokens already in the KV cache).

    Expected: ``input_ids`` [B, S] integer in [0, vocab_size) or ``inputs_embeds`` [B, S, hidden_size] float, with
    B, S >= 1 and past_len + S <= max_position_embeddings (any length with dynamic RoPE); ``attention_mask``
    [B, past_len + S] of 0/1 (bool, int or float), or a prepared 4-D / BlockMask mask; ``position_ids`` [B, S] or
    [1, S] integer in [0, max_position_embeddings); ``labels`` [B, S] integer in [0, vocab_size) or
    ``ignore_index`` (-100), S >= 2, with at least one target after the first position; ``shift_labels`` [B, S]
    likewise, with at least one target (no target is allowed for either when ``num_items_in_batch`` is given).

    Returns whether ``attention_mask`` has padding (a 0), or None without a 2-D mask."""
    if input_ids is not None:
        _require_tensor("input_ids", input_ids)
        _require_integer("input_ids", input_ids, "token ids")
        if input_ids.ndim != 2:
            hint = " (one sequence needs a batch dimension: input_ids[None])" if input_ids.ndim == 1 else ""
            raise ValueError(f"input_ids must be 2-D [batch, seq]; got shape {_shape(input_ids)}{hint}")
        B, S = input_ids.shape
        source = f"input_ids of shape {_shape(input_ids)}"
    else:
        _require_tensor("inputs_embeds", inputs_embeds)
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(f"inputs_embeds must be [batch, seq, hidden_size={config.hidden_size}]; "
                             f"got shape {_shape(inputs_embeds)}")
        if not inputs_embeds.is_floating_point():
            raise ValueError(f"inputs_embeds must be a floating-point tensor; got dtype {inputs_embeds.dtype}")
        B, S = inputs_embeds.shape[:2]
        source = f"inputs_embeds of shape {_shape(inputs_embeds)}"
    if B == 0 or S == 0:
        raise ValueError(f"{source}: batch size and sequence length must both be at least 1")
    max_pos = config.max_position_embeddings
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "dynamic":  # dynamic NTK RoPE rescales itself beyond max_position_embeddings
        max_pos = float("inf")
    if past_len + S > max_pos:
        cached = f" after {past_len} cached tokens (past + new = {past_len + S})" if past_len else ""
        raise ValueError(f"{source}: {S} tokens{cached} exceed max_position_embeddings={max_pos}")

    if attention_mask is not None and _prepared_mask(attention_mask):
        if attention_mask.shape[0] not in (1, B) or attention_mask.shape[-2] != S:
            raise ValueError(f"a prepared 4-D attention_mask must be [batch={B}, heads, seq={S}, keys]; "
                             f"got shape {_shape(attention_mask)}")
        attention_mask = None  # built by transformers' mask utilities: nothing to read
    if attention_mask is not None:
        _require_tensor("attention_mask", attention_mask)
        if attention_mask.ndim != 2:
            raise ValueError(f"attention_mask must be 2-D [batch, seq] of 0/1; got shape {_shape(attention_mask)}")
        if _shape(attention_mask) != (B, past_len + S):
            span = f"past {past_len} + new {S}" if past_len else f"seq {S}"
            raise ValueError(f"attention_mask must have shape [batch={B}, {span} = {past_len + S}] (one entry per "
                             f"cached and new token); got shape {_shape(attention_mask)}")
        if attention_mask.is_complex():
            raise ValueError(f"attention_mask must hold 0/1; got dtype {attention_mask.dtype}")
    if position_ids is not None:
        _require_tensor("position_ids", position_ids)
        _require_integer("position_ids", position_ids, "positions")
        if position_ids.ndim != 2 or position_ids.shape[0] not in (1, B) or position_ids.shape[1] != S:
            raise ValueError(f"position_ids must have shape [batch={B} (or 1), seq={S}]; "
                             f"got shape {_shape(position_ids)}")
    if shift_labels is not None:
        _require_tensor("shift_labels", shift_labels)
        _require_integer("shift_labels", shift_labels, f"token ids (or {ignore_index})")
        if _shape(shift_labels) != (B, S):
            raise ValueError(f"shift_labels must have the shape of the input, [batch={B}, seq={S}]; "
                             f"got shape {_shape(shift_labels)}")
    if labels is not None and shift_labels is None:
        _require_tensor("labels", labels)
        _require_integer("labels", labels, f"token ids (or {ignore_index})")
        if _shape(labels) != (B, S):
            raise ValueError(f"labels must have the shape of the input, [batch={B}, seq={S}]; "
                             f"got shape {_shape(labels)}")
        if S < 2:
            raise ValueError(
                f"labels of shape {_shape(labels)} leave no next-token target: the loss shifts labels by one "
                "(position t predicts label t+1), so sequences with labels need at least 2 tokens")

    # Values: every check reduced on the device, read back in one sync.
    checks: dict[str, Tensor] = {}
    V = config.vocab_size
    if input_ids is not None:
        checks["input_ids"] = ((input_ids < 0) | (input_ids >= V)).any()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            checks["padded"] = ~attention_mask.all()
        else:
            checks["attention_mask"] = ((attention_mask != 0) & (attention_mask != 1)).any()
            checks["padded"] = (attention_mask == 0).any()
    if position_ids is not None:
        checks["position_ids"] = ((position_ids < 0) | (position_ids >= max_pos)).any()
    targets, name = (shift_labels, "shift_labels") if shift_labels is not None else (labels, "labels")
    if targets is not None:
        checks["labels"] = ((targets != ignore_index) & ((targets < 0) | (targets >= V))).any()
        if num_items_in_batch is None:
            checks["no_target"] = (targets[:, 1:] == ignore_index).all() if name == "labels" \
                else (targets == ignore_index).all()
    if not checks:
        return None
    flags = dict(zip(checks, torch.stack(list(checks.values())).tolist()))  # the one host sync

    if flags.get("input_ids"):
        bad = (input_ids < 0) | (input_ids >= V)
        raise ValueError(f"input_ids must be in [0, vocab_size={V}); got {_some_values(input_ids, bad)} "
                         f"at {int(bad.sum())} positions")
    if flags.get("attention_mask"):
        bad = (attention_mask != 0) & (attention_mask != 1)
        raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (token); got "
                         f"{_some_values(attention_mask, bad)} at {int(bad.sum())} positions")
    if flags.get("position_ids"):
        bad = (position_ids < 0) | (position_ids >= max_pos)
        raise ValueError(f"position_ids must be in [0, max_position_embeddings={max_pos}); got "
                         f"{_some_values(position_ids, bad)} at {int(bad.sum())} positions")
    if flags.get("labels"):
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
        raise ValueError(f"{name} must be token ids in [0, vocab_size={V}) or {ignore_index} (ignored); got "
                         f"{_some_values(targets, bad)} at {int(bad.sum())} positions")
    if flags.get("no_target"):
        where = ("every label after the first position is", " (position t predicts label t+1, so labels[:, 0] is "
                 "never a target)") if name == "labels" else ("every shift_label is", "")
        raise ValueError(
            f"{name} of shape {_shape(targets)} have no target token: {where[0]} {ignore_index}{where[1]}; the mean "
            "cross-entropy over zero tokens is undefined (transformers returns nan); leave such batches out")
    return flags.get("padded")


def _prepared_mask(mask) -> bool:
    """A mask in an attention kernel's own form (transformers' 4-D masks, flex attention's BlockMask)."""
    return (torch.is_tensor(mask) and mask.ndim == 4) or type(mask).__name__ == "BlockMask"
