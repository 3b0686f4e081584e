"""Attention through transformers' attention interface, and the causal mask through transformers' mask utilities.

The attention kernel is the one ``config._attn_implementation`` names (``attn_implementation=`` in
``from_pretrained`` or the constructor, or ``model.set_attn_implementation``): ``"sdpa"`` (the default),
``"eager"`` (below: explicit softmax(QKᵀ/√d + mask) V, the only one that returns the attention weights, so
``output_attentions=True`` needs it), ``"flex_attention"``, and the flash kernels where they are installed; all
come from ``transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS``.

The mask comes from ``transformers.masking_utils.create_causal_mask`` in the form that kernel wants (None when
SDPA's ``is_causal`` is exact, a boolean [B, 1, q, kv] tensor for SDPA, an additive float one for eager, a
``BlockMask`` for flex), sized by the cache (dynamic or static). hizoo's one addition is the padding rule: with
left padding a padding query would see no key at all (softmax over nothing: NaN in SDPA, a uniform average in
eager), so every query may attend to itself, causal ∧ (real key ∨ key = query). Padding positions then carry a
well-defined value that is the same for every kernel, which keeps the routers' batch statistics (load-balance
loss, Hi-MoE's logit EMA) equal across kernels and free of NaN. Real tokens never attend to padding.
Flash attention unpads with the 2-D mask itself (its padding rows are never computed) and gets that mask.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache
from transformers.masking_utils import BlockMask, create_causal_mask, prepare_padding_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import is_flash_attention_requested

from .rope import apply_rotary


class RMSNorm(nn.Module):
    """x / rms(x) · w, computed in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """[B, Hkv, S, hd] -> [B, Hkv·n_rep, S, hd], each key/value head repeated for its n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    B, H_kv, S, hd = x.shape
    return x[:, :, None].expand(B, H_kv, n_rep, S, hd).reshape(B, H_kv * n_rep, S, hd)


def eager_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                            scaling: float, dropout: float = 0.0, **kwargs) -> tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ · scaling + mask) V with the softmax in fp32 (Vaswani et al. 2017, Eq. 1).

    query [B, H, q, hd], key/value [B, Hkv, kv, hd], attention_mask additive [B, 1, q, kv] (0 or the dtype's
    minimum) or boolean (True = may attend) -> (out [B, q, H, hd], weights [B, H, q, kv])."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, H, q, kv]
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # [B, q, H, hd]
    return out, weights


class Attention(nn.Module):
    """Multi-head attention with GQA and RoPE; the kernel is ``config._attn_implementation``.

    ``qk_norm`` is OLMoE's: RMSNorm over the whole q (and k) projection, before splitting into heads.
    forward(x [B, S, d], position_embeddings (cos, sin), attention_mask, cache) -> (out [B, S, d], weights or None)
    """

    is_causal = True

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        self.num_key_value_groups = self.n_heads // self.n_kv_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)
        self.o_proj.writes_residual = True  # depth-scaled init under init_scheme="switch" (_init_weights)
        self.q_norm = RMSNorm(self.n_heads * self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.n_kv_heads * self.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, x: Tensor, position_embeddings: tuple[Tensor, Tensor], attention_mask, cache: Cache | None = None,
                **kwargs) -> tuple[Tensor, Tensor | None]:
        B, S, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, S, hd]
        k = k.view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, hd]
        v = v.view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, Hkv, kv, hd]
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(
            self, q, k, v, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )  # out [B, S, H, hd]
        return self.o_proj(out.reshape(B, S, -1)), weights


def _real_key_or_self(padding_mask: Tensor):
    """Mask function (transformers' (batch, head, q, kv) convention): the key is a real token, or the query itself."""

    def mask(batch_idx, head_idx, q_idx, kv_idx):
        return padding_mask[batch_idx, kv_idx] | (q_idx == kv_idx)

    return mask


def causal_attention_mask(config, inputs_embeds: Tensor, attention_mask: Tensor | BlockMask | None,
                          cache: Cache | None, position_ids: Tensor | None = None, padded: bool | None = None):
    """The causal mask for ``config._attn_implementation`` (see the module docstring).

    ``attention_mask``: 2-D [B, past + S] of 0/1 (1 = real token), or a mask already prepared in the kernel's form
    (4-D tensor or BlockMask, e.g. by ``generate`` with a static cache), which is returned as it is.
    ``padded``: whether the 2-D mask has a 0, when the caller knows it (``check_inputs`` does; read here otherwise).
    ``position_ids``: pass them only when they are the caller's and there is no 2-D mask: transformers then treats
    positions that restart at 0 as packed sequences and keeps each one to itself."""
    if isinstance(attention_mask, BlockMask) or (attention_mask is not None and attention_mask.ndim == 4):
        return attention_mask
    common = dict(config=config, inputs_embeds=inputs_embeds, cache=cache)
    if attention_mask is None:
        return create_causal_mask(**common, attention_mask=None, position_ids=position_ids)
    if padded is None:
        padded = not bool(attention_mask.bool().all())
    if is_flash_attention_requested(config):
        return create_causal_mask(**common, attention_mask=attention_mask if padded else None)
    if not padded:  # an all-ones mask is no mask: transformers may then use SDPA's is_causal
        return create_causal_mask(**common, attention_mask=None)
    q_len = inputs_embeds.shape[1]
    if cache is not None:
        kv_len, kv_offset = cache.get_mask_sizes(q_len, 0)
    else:
        kv_len, kv_offset = attention_mask.shape[-1], 0
    padding_mask = prepare_padding_mask(attention_mask.bool(), kv_len, kv_offset)  # [B, ≥ kv_offset + kv_len]
    return create_causal_mask(**common, attention_mask=None, and_mask_function=_real_key_or_self(padding_mask))


def create_masks_for_generate(config, inputs_embeds: Tensor, attention_mask: Tensor | None, cache: Cache | None,
                              position_ids: Tensor | None = None, **kwargs):
    """What ``generate`` calls to prepare the mask once per step for a compilable (static) cache: hizoo's mask."""
    return causal_attention_mask(config, inputs_embeds, attention_mask, cache)
