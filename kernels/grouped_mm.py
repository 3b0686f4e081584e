"""Grouped SwiGLU experts on ``torch.nn.functional.grouped_mm`` (CPU and GPU).

Pipeline: sort pairs by expert -> gather token rows -> grouped GEMM 1 (w13) -> SwiGLU -> grouped GEMM 2 (w2)
-> scale by combine weights -> scatter-add back to token order. Autograd comes from torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .permute import permute_by_expert


def grouped_mm_experts(x: Tensor, w13: Tensor, w2: Tensor, expert_idx: Tensor, expert_weight: Tensor) -> Tensor:
    """Same contract as ``eager_experts``: x [T, d], w13 [E, d, 2f], w2 [E, f, d], expert_idx/weight [T, K]."""
    E, f = w13.shape[0], w2.shape[1]
    perm = permute_by_expert(expert_idx, E)
    x_sorted = x[perm.sorted_token]  # [T*K, d]
    gate_up = F.grouped_mm(x_sorted, w13, offs=perm.offsets)  # [T*K, 2f]
    h = (F.silu(gate_up[:, :f]) * gate_up[:, f:]).contiguous()  # [T*K, f]
    y = F.grouped_mm(h, w2, offs=perm.offsets)  # [T*K, d]
    y = y * expert_weight.flatten()[perm.sorted_pair, None].to(y.dtype)
    return torch.zeros_like(x).index_add_(0, perm.sorted_token, y.to(x.dtype))
