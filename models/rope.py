"""Rotary position embedding (RoPE, Su et al. 2021) in the rotate-half layout, with transformers' scaled variants.

``config.rope_parameters["rope_type"]`` picks the inverse frequencies: ``"default"`` is plain RoPE,
θ_i = rope_theta^(−2i/head_dim); every other type (linear, dynamic NTK, YaRN, Llama-3, LongRoPE) is computed by
transformers' ``ROPE_INIT_FUNCTIONS``, which also returns the attention scaling YaRN/LongRoPE apply to cos and
sin. ``dynamic_rope_update`` recomputes the frequencies of the dynamic kinds from the positions of each forward,
exactly as in transformers' models (the module follows their RotaryEmbedding conventions, so transformers'
weight initialization also re-creates its buffers after a meta-device load).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update


class HizooRotaryEmbedding(nn.Module):
    """forward(x, position_ids [B, S]) -> (cos, sin) [B, S, head_dim] in x's dtype, computed in fp32."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        init_fn = self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = init_fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [head_dim / 2]
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config, device=None, seq_len=None, **kwargs) -> tuple[Tensor, float]:
        """Plain RoPE: inv_freq_i = 1 / rope_theta^(2i / head_dim), no attention scaling."""
        base, dim = config.rope_parameters["rope_theta"], config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @dynamic_rope_update
    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)  # [B, S, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, S, hd]
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """q [B, H, S, hd], k [B, Hkv, S, hd], cos/sin [B, S, hd] -> rotated q, k."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, S, hd]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
