"""Projections onto doubly stochastic matrices for mHC's residual mixing H_res.

Two ways, both batched over any leading dimensions and computed in fp32:

- ``sinkhorn_log``: Sinkhorn–Knopp (mHC, DeepSeek arXiv 2512.24880, Eq. 8) on exp(logits) given as logits,
  in the official stream-collapse code's order (input axis first, output axis last), alternating
  normalizations on shifted and clamped exponentials: equal to that code's log-domain iteration within
  1e-6 for logit spreads up to 80, at a quarter of its cost (see ``sinkhorn_log`` for larger spreads).
  After a finite number of iterations the last-normalized (output) axis sums to 1 exactly and the input
  axis to 1 up to the (geometrically shrinking) Sinkhorn residual.
- ``permutation_mixture``: mHC-lite, H_res = Σ_r softmax(c)_r P_r over all n! permutation matrices P_r
  (Birkhoff–von Neumann), exactly doubly stochastic without iterations.

Layout: ``mix[..., i, j]`` is the weight of input stream i in output stream j (the transpose of the
paper's H_res[out, in]; doubly stochastic either way). It is the official code's layout too
(``alpha_residual[..., s, t]``, s input, t output), so after Sinkhorn ``mix.sum(-1)`` (each input
stream's total weight over outputs) is exact and ``mix.sum(-2)`` (each output's weights over inputs) is not.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch
from torch import Tensor


def sinkhorn_log(logits: Tensor, iters: int) -> Tensor:
    """logits [..., n, n] -> doubly stochastic [..., n, n] (fp32; fp64 stays fp64).

    Sinkhorn–Knopp on exp(logits) (mHC Eq. 8) in the order of the official stream-collapse code
    (``hyper_conn/mhc.py`` ``sinkhorn_knopps``: per iteration a logsumexp over dim −2, the input stream,
    then over dim −1, the output stream): each iteration first normalizes over the input axis i (each
    output stream becomes a convex combination of the inputs) and then over the output axis j (each input
    stream distributes a total weight of 1). So ``mix.sum(-1)`` is exact after every iteration and
    ``mix.sum(-2)`` converges geometrically, but slowly for nearly decomposable matrices: near mHC's
    identity init (logits 0 / −8) with token-dependent noise, 20 iterations leave residuals of ~1e-4–1e-3
    on that axis; logits with a spread of ±0.5 converge to fp32 precision.

    Exponential domain instead of the official log domain, at a quarter of its cost: each column j is
    shifted by its maximum over i (exact: the first normalization, over i, divides the shift out) and
    clamped to at most ``CLAMP`` below it before exp, so no entry overflows and no sum is zero in fp32.
    No entry is clamped while a matrix's logit spread (max − min) is at most 80, and there the tests find
    it equal to the log-domain iteration (fp64) within 1e-6. Beyond, clamped and underflowing entries can
    change the result (1e-5 at spreads near 100, up to ~1 past 130 in the tests), as they do in the
    exp-domain variant the official code keeps for its analysis (``mhc_analysis.py``: the same per-column
    shift, no clamp). The official analysis already calls spreads above 30 extreme; hizoo's reports the
    spread distribution (``logit_spread``). Forward
    runs without autograd; the backward (``_Sinkhorn``) replays the normalizations analytically from the
    saved normalizers, so the 2·iters steps cost one [n, batch] tensor each instead of an autograd graph.
    """
    if logits.dtype != torch.float64:
        logits = logits.float()
    return _Sinkhorn.apply(logits, iters)


CLAMP = 80.0  # e^-80 ≈ 1.8e-35 is still a normal fp32 number
NORM_DIMS = (0, 1)  # in the [n(i), n(j), batch] layout: over inputs i first, over outputs j last (official order)


class _Sinkhorn(torch.autograd.Function):
    """Works in the layout [n(i), n(j), batch] (batch contiguous), where each normalization is a handful of
    vectorized adds over contiguous rows instead of a strided reduction over 4 elements. Saves the shifted
    logits and the 2·iters normalizers ([1, n, batch] / [n, 1, batch]); backward replays the iterates from
    them (one division each) and then differentiates the normalizations in reverse."""

    @staticmethod
    def forward(ctx, logits: Tensor, iters: int) -> Tensor:
        with torch.no_grad():
            x = logits.movedim((-2, -1), (0, 1)).contiguous()  # [n(i), n(j), ...]
            shifted = x - x.amax(dim=NORM_DIMS[0], keepdim=True)  # per column j: max over i is 0
            m = shifted.clamp(min=-CLAMP).exp()
            norms = []
            for _ in range(iters):
                for dim in NORM_DIMS:
                    norm = m.sum(dim, keepdim=True)
                    m = m / norm
                    norms.append(norm)
        ctx.save_for_backward(shifted, *norms)
        return m.movedim((0, 1), (-2, -1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        shifted, *norms = ctx.saved_tensors
        m0 = shifted.clamp(min=-CLAMP).exp()
        iterates, m = [], m0
        for norm in norms:
            m = m / norm
            iterates.append(m)
        grad = grad.movedim((-2, -1), (0, 1)).contiguous()  # [n, n, ...] like the iterates
        for step in range(len(norms) - 1, -1, -1):
            dim = NORM_DIMS[step % 2]
            # y = x / Σ_dim x  ->  dx = (dy − Σ_dim(dy ⊙ y)) / Σ_dim x
            grad = (grad - (grad * iterates[step]).sum(dim, keepdim=True)) / norms[step]
        grad = grad * m0 * (shifted >= -CLAMP)  # through exp and the clamp; the column shift has zero gradient
        return grad.movedim((0, 1), (-2, -1)), None


@lru_cache(maxsize=8)
def _permutations_cpu(n: int) -> Tensor:
    index = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)  # [n!, n]; row 0 = identity
    return torch.eye(n)[index]  # [n!, n, n]: P_r[i, j] = 1 iff j = perm_r(i)


def permutation_matrices(n: int, device: torch.device | str | None = None) -> Tensor:
    """All n! permutation matrices [n!, n, n], the identity first. Cached per n (a constant, never mutated)."""
    return _permutations_cpu(n).to(device)


def permutation_mixture(logits: Tensor) -> Tensor:
    """logits [..., n!] -> Σ_r softmax(logits)_r P_r  [..., n, n] (fp32), exactly doubly stochastic."""
    n_perm = logits.shape[-1]
    n = next(k for k in range(1, 8) if math.factorial(k) == n_perm)
    perms = permutation_matrices(n, logits.device).flatten(1)  # [n!, n²]
    weights = torch.softmax(logits.float(), dim=-1)  # [..., n!]
    return (weights @ perms).unflatten(-1, (n, n))

