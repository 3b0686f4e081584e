"""Grouped SwiGLU experts on ``torch.nn.functional.grouped_mm`` (CPU and GPU).

Pipeline: sort pairs by expert -> gather token rows -> grouped GEMM 1 (w13) -> SwiGLU, scaled by the combine
weight of each row -> grouped GEMM 2 (w2) -> scatter-add back to token order. The GEMMs use torch's autograd;
the gather, the weighted SwiGLU and the scatter are small autograd Functions that save only indices and the
GEMM-1 output (activation memory: x rows, GEMM-1 output and SwiGLU output, about 40% less than saving
every intermediate) and run their backward as one index_add / index_select instead of an indexed put.

``grouped_mm`` needs every row stride to be a multiple of 16 bytes (d and f multiples of 4 in fp32, of 8 in
bf16/fp16). Other shapes are zero-padded to the next multiple: padded input columns meet zero weight rows and
padded hidden units are silu(0)·0 = 0, so the result and the gradients are exact (``F.pad`` is differentiable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .grouped_mm_op import grouped_mm
from .permute import permute_by_expert


class _GatherRows(torch.autograd.Function):
    """x [T, d], index [N] -> x[index] [N, d]; backward scatter-adds rows (saves the index only)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.num_rows, grad.shape[1]).index_add_(0, index, grad), None


class _ScatterAddRows(torch.autograd.Function):
    """y [N, d], index [N] -> out [T, d] with out[index[n]] += y[n]; backward gathers (saves the index only)."""

    @staticmethod
    def forward(ctx, y: Tensor, index: Tensor, num_rows: int) -> Tensor:
        ctx.save_for_backward(index)
        return y.new_zeros(num_rows, y.shape[1]).index_add_(0, index, y)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


class _WeightedSwiGLU(torch.autograd.Function):
    """gate_up [N, 2f], w [N, 1] -> silu(gate) ⊙ up ⊙ w [N, f]; saves only its inputs, recomputes silu."""

    @staticmethod
    def forward(ctx, gate_up: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(gate_up, w)
        f = gate_up.shape[1] // 2
        return F.silu(gate_up[:, :f]) * (gate_up[:, f:] * w)

    @staticmethod
    def backward(ctx, grad: Tensor):
        gate_up, w = ctx.saved_tensors
        f = gate_up.shape[1] // 2
        gate, up = gate_up[:, :f], gate_up[:, f:]
        silu = F.silu(gate)  # [N, f]
        grad_gate_up = torch.empty_like(gate_up)  # [N, 2f], both halves written in place (no cat)
        grad_up_unweighted = grad * up  # dL/d(w·silu)
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.linalg.vecdot(grad_up_unweighted, silu, dim=1).unsqueeze(1).to(w.dtype)  # [N, 1]
        grad_gate_up[:, :f] = torch.ops.aten.silu_backward(grad_up_unweighted.mul_(w), gate)
        grad_gate_up[:, f:] = (grad * w).mul_(silu)  # (a slice assignment, not out=: torch.compile traces it)
        return grad_gate_up, grad_w


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
    E = w13.shape[0]
    perm = permute_by_expert(expert_idx, E)
    x_sorted = _GatherRows.apply(x, perm.sorted_token)  # [T*K, d]
    gate_up = grouped_mm(x_sorted, w13, perm.offsets)  # [T*K, 2f]
    # The combine weight scales the f-wide hidden rows (cheaper than the d-wide outputs; GEMM 2 is linear).
    row_weight = expert_weight.flatten()[perm.sorted_pair, None].to(gate_up.dtype)  # [T*K, 1]
    h = _WeightedSwiGLU.apply(gate_up, row_weight)  # [T*K, f] contiguous
    y = grouped_mm(h, w2, perm.offsets)  # [T*K, d]
    out = _ScatterAddRows.apply(y.to(x.dtype), perm.sorted_token, x.shape[0])  # [T, d]
    return out[:, :d] if out.shape[1] != d else out
