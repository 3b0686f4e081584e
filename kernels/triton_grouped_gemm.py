"""Triton grouped GEMMs over rows sorted by expert (ScatterMoE-style: gather fused into the A load).

Two kernels:
- ``gather_gemm``: C[c_row(r)] = scale[r] · A[a_row(r)] @ B[e(r)] for every sorted row r, where a_row is
  an optional gather index (token of the pair, so no permuted copy of x is materialized), scale an optional
  per-row factor and c_row an optional scatter index (pair position, for a deterministic reduction later).
  B is addressed by strides, so transposed weights (dX) need no copy. One program = one M-block of one
  expert (from ``permute.block_schedule``) × one N-block.
- ``expert_outer_gemm``: dW[e] = A[rows_e]ᵀ @ (scale · B[rows_e]) per expert, looping over the expert's
  rows in BLOCK_M chunks (experts with no rows store zeros).

Both accumulate in fp32 and store in the output's dtype. Under ``TRITON_INTERPRET=1`` (CPU tests) autotune
gets a single small config; the interpreter also needs fp32 inputs to ``tl.dot``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # inside try: transformers' check_imports lets an exported model load where Triton is missing
    import triton
    import triton.language as tl
except ImportError as err:  # GroupedExperts runs grouped_mm instead and never imports this module (kernels/experts.py)
    raise ImportError("the triton experts backend needs the triton package") from err

from .permute import BlockSchedule

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BLOCK_M = 16 if INTERPRET else 64  # M-block of the schedule; fixed so the tile map is built once per call


def _configs(names: tuple[str, str]) -> list[triton.Config]:
    n1, n2 = names
    if INTERPRET:
        return [triton.Config({n1: 16, n2: 16}, num_warps=1, num_stages=1)]
    return [
        triton.Config({n1: bn, n2: bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in [
            (128, 64, 4, 3),
            (128, 64, 8, 4),
            (64, 64, 4, 4),
            (128, 32, 4, 4),
            (256, 64, 8, 3),
            (64, 128, 4, 3),
        ]
    ]


@triton.autotune(configs=_configs(("BLOCK_N", "BLOCK_K")), key=["N", "KD", "HAS_A_IDX", "HAS_C_IDX"])
@triton.jit
def _gather_gemm_kernel(
    a_ptr, a_idx_ptr, scale_ptr, b_ptr, c_ptr, c_idx_ptr,
    tile_expert_ptr, tile_start_ptr, expert_end_ptr,
    N, KD,
    stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_cn,
    HAS_A_IDX: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_C_IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    e = tl.load(tile_expert_ptr + tile)
    if e < 0:  # tile beyond the real number of blocks (grid is sized by an upper bound)
        return
    row0 = tl.load(tile_start_ptr + tile)
    row_end = tl.load(expert_end_ptr + e)
    rows = row0 + tl.arange(0, BLOCK_M)  # [BM] sorted rows
    row_mask = rows < row_end
    if HAS_A_IDX:
        a_rows = tl.load(a_idx_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # fused gather
    else:
        a_rows = rows.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + ks[None, :] * stride_ak  # [BM, BK]
    b_ptrs = b_ptr + e.to(tl.int64) * stride_be + ks[:, None] * stride_bk + cols[None, :] * stride_bn  # [BK, BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        k_mask = (k0 + ks) < KD
        a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if HAS_SCALE:
        s = tl.load(scale_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        acc = acc * s[:, None]
    if HAS_C_IDX:
        c_rows = tl.load(c_idx_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # fused scatter to pair order
    else:
        c_rows = rows.to(tl.int64)
    c_ptrs = c_ptr + c_rows[:, None] * stride_cm + cols[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.autotune(configs=_configs(("BLOCK_N", "BLOCK_D")), key=["N", "D", "HAS_A_IDX", "HAS_B_IDX"])
@triton.jit
def _expert_outer_kernel(
    a_ptr, a_idx_ptr, b_ptr, b_idx_ptr, scale_ptr, c_ptr,
    expert_start_ptr, expert_end_ptr,
    D, N,
    stride_am, stride_ad, stride_bm, stride_bn, stride_ce, stride_cd, stride_cn,
    HAS_A_IDX: tl.constexpr, HAS_B_IDX: tl.constexpr, HAS_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    e = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD] rows of dW[e]
    ns = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] cols of dW[e]
    d_mask = ds < D
    n_mask = ns < N
    start = tl.load(expert_start_ptr + e)
    end = tl.load(expert_end_ptr + e)
    acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_M):  # the expert's rows; zero iterations for an empty expert
        rows = r0 + tl.arange(0, BLOCK_M)
        m = rows < end
        if HAS_A_IDX:
            a_rows = tl.load(a_idx_ptr + rows, mask=m, other=0).to(tl.int64)
        else:
            a_rows = rows.to(tl.int64)
        if HAS_B_IDX:
            b_rows = tl.load(b_idx_ptr + rows, mask=m, other=0).to(tl.int64)
        else:
            b_rows = rows.to(tl.int64)
        at = tl.load(  # [BD, BM]: A rows loaded already transposed
            a_ptr + a_rows[None, :] * stride_am + ds[:, None] * stride_ad, mask=m[None, :] & d_mask[:, None], other=0.0
        )
        b = tl.load(b_ptr + b_rows[:, None] * stride_bm + ns[None, :] * stride_bn, mask=m[:, None] & n_mask[None, :], other=0.0)
        if HAS_SCALE:
            s = tl.load(scale_ptr + rows, mask=m, other=0.0)
            b = (b.to(tl.float32) * s.to(tl.float32)[:, None]).to(b.dtype)
        acc += tl.dot(at, b, input_precision=PRECISION)
    c_ptrs = c_ptr + e.to(tl.int64) * stride_ce + ds[:, None] * stride_cd + ns[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=d_mask[:, None] & n_mask[None, :])


def _precision(a: Tensor) -> str:
    """fp32 inputs get full-precision dots (not TF32) so the fp32 path matches eager; 16-bit inputs use the default."""
    return "ieee" if a.dtype == torch.float32 else None  # None: Triton's default for 16-bit dots


def gather_gemm(
    a: Tensor,
    b: Tensor,
    sched: BlockSchedule,
    num_rows: int,
    *,
    a_idx: Tensor | None = None,
    scale: Tensor | None = None,
    c_idx: Tensor | None = None,
    transpose_b: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Rows r in sorted order: out[c_idx[r]] = scale[r] · a[a_idx[r]] @ b[e(r)] (bᵀ per expert if transpose_b).

    a [*, KD], b [E, KD, N] (or [E, N, KD] with transpose_b) -> out [num_rows, N].
    """
    stride_be, stride_bk, stride_bn = b.stride()
    if transpose_b:
        stride_bk, stride_bn = stride_bn, stride_bk
    KD = a.shape[1]
    N = b.shape[1] if transpose_b else b.shape[2]
    out = torch.empty(num_rows, N, device=a.device, dtype=out_dtype or a.dtype)
    if num_rows == 0:
        return out
    dummy = sched.tile_expert  # placeholder pointer for absent optional tensors (never read)
    grid = lambda meta: (sched.tile_expert.numel(), triton.cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    _gather_gemm_kernel[grid](
        a, a_idx if a_idx is not None else dummy, scale if scale is not None else dummy, b, out,
        c_idx if c_idx is not None else dummy,
        sched.tile_expert, sched.tile_start, sched.expert_end,
        N, KD,
        a.stride(0), a.stride(1), stride_be, stride_bk, stride_bn, out.stride(0), out.stride(1),
        HAS_A_IDX=a_idx is not None, HAS_SCALE=scale is not None, HAS_C_IDX=c_idx is not None,
        BLOCK_M=sched.block_m, PRECISION=_precision(a),
    )
    return out


def expert_outer(
    a: Tensor,
    b: Tensor,
    sched: BlockSchedule,
    *,
    a_idx: Tensor | None = None,
    b_idx: Tensor | None = None,
    scale: Tensor | None = None,
    out_dtype: torch.dtype,
) -> Tensor:
    """dW[e] = Σ_{r of expert e} a[a_idx[r]]ᵀ (scale[r] · b[b_idx[r]]): a [*, D], b [*, N] -> [E, D, N]."""
    E = sched.expert_end.numel()
    D, N = a.shape[1], b.shape[1]
    out = torch.empty(E, D, N, device=a.device, dtype=out_dtype)
    dummy = sched.expert_end
    grid = lambda meta: (E, triton.cdiv(D, meta["BLOCK_D"]), triton.cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    _expert_outer_kernel[grid](
        a, a_idx if a_idx is not None else dummy, b, b_idx if b_idx is not None else dummy,
        scale if scale is not None else dummy, out,
        sched.expert_start, sched.expert_end,
        D, N,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1), out.stride(2),
        HAS_A_IDX=a_idx is not None, HAS_B_IDX=b_idx is not None, HAS_SCALE=scale is not None,
        BLOCK_M=sched.block_m, PRECISION=_precision(a),
    )
    return out
