"""Eager reference for grouped SwiGLU experts: a Python loop over experts.

Every other backend is tested against this one; it favours obviousness over speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def eager_experts(x: Tensor, w13: Tensor, w2: Tensor, expert_idx: Tensor, expert_weight: Tensor) -> Tensor:
    """y_t = Σ_k weight_tk · W2_e (silu(x_t W1_e) ⊙ x_t W3_e), e = expert_idx[t, k].

    x [T, d], w13 [E, d, 2f] (gate | up), w2 [E, f, d], expert_idx [T, K], expert_weight [T, K] -> [T, d]
    """
    out = torch.zeros_like(x)
    f = w2.shape[1]
    for e in range(w13.shape[0]):
        token_idx, slot = torch.where(expert_idx == e)  # [n_e], [n_e]
        if token_idx.numel() == 0:
            continue
        gate_up = x[token_idx] @ w13[e]  # [n_e, 2f]
        h = F.silu(gate_up[:, :f]) * gate_up[:, f:]  # [n_e, f]
        y = (h @ w2[e]) * expert_weight[token_idx, slot, None].to(x.dtype)  # [n_e, d]
        out.index_add_(0, token_idx, y)
    return out
