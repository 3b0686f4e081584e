"""Grouped SwiGLU experts on Triton grouped GEMMs, forward and backward (the ``triton`` backend).

Forward, with rows sorted by expert (``permute_by_expert``) and an M-block schedule built on device
(``block_schedule``, no host sync):
  gu  = gather_gemm(x[token(r)] @ w13[e])           [T·K, 2f] sorted rows; x rows gathered inside the kernel
  h   = silu(gate) ⊙ up                             [T·K, f]  (elementwise in torch)
  y   = gather_gemm(h @ w2[e]) stored at pair t·K+k  [T·K, d]  scatter to pair order inside the kernel
  out = Σ_k weight[t,k] · y[t,k]                    [T, d]
The weighted combine is a fixed-order sum over K of per-pair rows instead of an atomic scatter-add: it is
deterministic (bitwise reproducible), keeps fp32 accumulation across the K contributions, and ``y`` is needed
anyway for the combine-weight gradient. The cost is one [T·K, d] buffer.

Backward (``torch.autograd.Function``), all GEMMs grouped and accumulated in fp32:
  dweight[t,k] = <dout_t, y[t,k]>
  dh   = weight · dout[token] @ w2[e]ᵀ      (gather + per-row scale fused, transposed weights via strides)
  dw2[e]  = h_eᵀ (weight · dout[token])_e   (per expert XᵀdY, rows gathered in the kernel)
  dgu  = SwiGLU backward of dh
  dw13[e] = x[token]_eᵀ dgu_e
  dx   = Σ_k (dgu @ w13[e]ᵀ) at pair t·K+k  (same deterministic per-pair reduction as the forward)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .permute import BlockSchedule, block_schedule, permute_by_expert
from .triton_grouped_gemm import BLOCK_M, expert_outer, gather_gemm


def _check(x: Tensor, w13: Tensor, w2: Tensor, expert_idx: Tensor, expert_weight: Tensor) -> None:
    if x.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError(f"expected x [T, d], w13 [E, d, 2f], w2 [E, f, d]; got {tuple(x.shape)}, "
                         f"{tuple(w13.shape)}, {tuple(w2.shape)}")
    E, d, two_f = w13.shape
    if x.shape[1] != d or w2.shape != (E, two_f // 2, d) or two_f % 2:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
    if expert_idx.shape != expert_weight.shape or expert_idx.dim() != 2 or expert_idx.shape[0] != x.shape[0]:
        raise ValueError(f"expert_idx {tuple(expert_idx.shape)} and expert_weight {tuple(expert_weight.shape)} "
                         f"must both be [T, K] with T = {x.shape[0]}")
    if not (x.dtype == w13.dtype == w2.dtype):
        raise ValueError(f"x, w13, w2 must share a dtype; got {x.dtype}, {w13.dtype}, {w2.dtype}")


def _swiglu(gu: Tensor) -> Tensor:
    gate, up = gu.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gu.dtype)  # [N, f]


def _swiglu_backward(gu: Tensor, dh: Tensor) -> Tensor:
    gate, up = gu.float().chunk(2, dim=-1)
    sig = torch.sigmoid(gate)
    dh = dh.float()
    d_gate = dh * up * sig * (1 + gate * (1 - sig))  # d silu(g)/dg = σ(g)(1 + g(1 − σ(g)))
    d_up = dh * gate * sig
    return torch.cat([d_gate, d_up], dim=-1).to(gu.dtype)  # [N, 2f]


class _TritonExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w13, w2, expert_idx, expert_weight):
        T, d = x.shape
        K = expert_idx.shape[1]
        E = w13.shape[0]
        perm = permute_by_expert(expert_idx, E)
        sched = block_schedule(perm, T * K, BLOCK_M)
        tok, pair = perm.sorted_token, perm.sorted_pair  # [T*K], [T*K]
        gu = gather_gemm(x, w13, sched, T * K, a_idx=tok)  # [T*K, 2f] sorted by expert
        h = _swiglu(gu)  # [T*K, f]
        y = gather_gemm(h, w2, sched, T * K, c_idx=pair)  # [T*K, d] in pair order, unweighted
        out = (y.view(T, K, d).float() * expert_weight.float().unsqueeze(-1)).sum(1).to(x.dtype)  # [T, d]
        ctx.save_for_backward(x, w13, w2, expert_weight, gu, y, tok, pair,
                              sched.tile_expert, sched.tile_start, sched.expert_end, sched.expert_start)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w13, w2, expert_weight, gu, y, tok, pair, t_exp, t_start, e_end, e_start = ctx.saved_tensors
        sched = BlockSchedule(t_exp, t_start, e_end, e_start, BLOCK_M)
        T, d = x.shape
        K = expert_weight.shape[1]
        dout = dout.to(x.dtype)
        need_x, need_w13, need_w2, _, need_wt = ctx.needs_input_grad
        dx = dw13 = dw2 = dwt = None
        if need_wt:
            dwt = (y.view(T, K, d).float() * dout.float().unsqueeze(1)).sum(-1).to(expert_weight.dtype)  # [T, K]
        if not (need_x or need_w13 or need_w2):
            return dx, dw13, dw2, None, dwt
        w_sorted = expert_weight.flatten()[pair].contiguous()  # [T*K] combine weight of each sorted row
        if need_w2:
            h = _swiglu(gu)  # recomputed: cheaper than saving another [T*K, f]
            dw2 = expert_outer(h, dout, sched, b_idx=tok, scale=w_sorted, out_dtype=w2.dtype)  # [E, f, d]
        if need_x or need_w13:
            dh = gather_gemm(dout, w2, sched, T * K, a_idx=tok, scale=w_sorted, transpose_b=True)  # [T*K, f]
            dgu = _swiglu_backward(gu, dh)  # [T*K, 2f]
            if need_w13:
                dw13 = expert_outer(x, dgu, sched, a_idx=tok, out_dtype=w13.dtype)  # [E, d, 2f]
            if need_x:
                dx_pair = gather_gemm(dgu, w13, sched, T * K, c_idx=pair, transpose_b=True)  # [T*K, d]
                dx = dx_pair.view(T, K, d).float().sum(1).to(x.dtype)  # [T, d]
        return dx, dw13, dw2, None, dwt


def triton_experts(x: Tensor, w13: Tensor, w2: Tensor, expert_idx: Tensor, expert_weight: Tensor) -> Tensor:
    """Same contract as ``eager_experts``: x [T, d], w13 [E, d, 2f], w2 [E, f, d], expert_idx/weight [T, K]."""
    _check(x, w13, w2, expert_idx, expert_weight)
    if x.shape[0] == 0:
        return x.new_zeros(x.shape) + 0 * (w13.sum() + w2.sum() + expert_weight.sum())
    expert_weight = expert_weight.to(x.dtype)
    return _TritonExperts.apply(x, w13, w2, expert_idx.to(torch.int64), expert_weight)
