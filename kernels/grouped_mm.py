"""Grouped SwiGLU experts on ``torch.nn.functional.grouped_mm`` (CPU and GPU).

Pipeline: sort pairs by expert -> gather token rows -> grouped GEMM 1 (w13) -> SwiGLU, scaled by the combine
weight of each row -> grouped GEMM 2 (w2) -> scatter-add back to token order. Autograd comes from torch.

``grouped_mm`` needs every row stride to be a multiple of 16 bytes (d and f multiples of 4 in fp32, of 8 in
bf16/fp16). Other shapes are zero-padded to the next multiple: padded input columns meet zero weight rows and
padded hidden units are silu(0)·0 = 0, so the result and the gradients are exact (``F.pad`` is differentiable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .permute import permute_by_expert


def _pad_to(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple - n


def _aligned(x: Tensor, w13: Tensor, w2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-pad d and f to multiples of 16 bytes; w13 pads gate and up halves separately."""
    align = max(1, 16 // x.element_size())
    f = w2.shape[1]
    pd, pf = _pad_to(x.shape[1], align), _pad_to(f, align)
    if pd == 0 and pf == 0:
        return x, w13, w2
    gate, up = w13[..., :f], w13[..., f:]
    w13 = torch.cat([F.pad(gate, (0, pf, 0, pd)), F.pad(up, (0, pf, 0, pd))], dim=-1)  # [E, d+pd, 2(f+pf)]
    return F.pad(x, (0, pd)), w13, F.pad(w2, (0, pd, 0, pf))  # x [T, d+pd], w2 [E, f+pf, d+pd]


def grouped_mm_experts(x: Tensor, w13: Tensor, w2: Tensor, expert_idx: Tensor, expert_weight: Tensor) -> Tensor:
    """Same contract as ``eager_experts``: x [T, d], w13 [E, d, 2f], w2 [E, f, d], expert_idx/weight [T, K]."""
    d = x.shape[1]
    x, w13, w2 = _aligned(x, w13, w2)
    E, f = w13.shape[0], w2.shape[1]
    perm = permute_by_expert(expert_idx, E)
    x_sorted = x[perm.sorted_token]  # [T*K, d]
    gate_up = F.grouped_mm(x_sorted, w13, offs=perm.offsets)  # [T*K, 2f]
    # The combine weight scales the f-wide hidden rows (cheaper than the d-wide outputs; GEMM 2 is linear).
    row_weight = expert_weight.flatten()[perm.sorted_pair, None].to(gate_up.dtype)  # [T*K, 1]
    h = F.silu(gate_up[:, :f]) * (gate_up[:, f:] * row_weight)  # [T*K, f] contiguous
    y = F.grouped_mm(h, w2, offs=perm.offsets)  # [T*K, d]
    out = torch.zeros(x.shape, dtype=x.dtype, device=x.device).index_add_(0, perm.sorted_token, y.to(x.dtype))
    return out[:, :d] if out.shape[1] != d else out
