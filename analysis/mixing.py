"""Per-token metrics of the residual mixing M (HC's A_r, mHC's H_res): pure functions, fp64.

Layout as in the connection ctx (models/stream_connection.py): ``mix[..., i, j]`` is the weight of input stream
i in output stream j, i.e. the transpose of the mHC paper's H_res[out, in]. The two axes:

- column sums  c_j = Σ_i M[i, j]: the total weight output stream j receives. These are the "column sums" of the
  stream-collapse paper's official analysis (``H_res.sum(axis=1)`` on the same [in, out] layout), and the row
  sums of the mHC paper's H_res[out, in]: their maximum over j is mHC's forward signal gain.
- row sums     r_i = Σ_j M[i, j]: the total weight input stream i sends. The column sums of mHC's H_res: their
  maximum over i is mHC's backward gradient gain.

Everything is computed per token, as the official analysis does (``analyze/h_and_nu.py`` pools the per-token
matrices of every connection): a token mean of M can be exactly doubly stochastic while every single token's M
is far from it, and the product over depth of token means is not the token mean of the per-token products.

What cannot move, by construction (``exact_axes``): mHC-lite's M = Σ_r softmax(c)_r P_r is a convex combination
of permutation matrices, so both axes sum to 1 exactly; mHC's Sinkhorn–Knopp ends with one normalization, so
that axis sums to 1 exactly after any number of iterations and only the other axis carries the Sinkhorn
residual; HC's A_r is unconstrained. With non-negative entries an exact axis also fixes its Amax gain at 1, for
one connection and for any product over depth (M 1 = 1 for every factor gives P 1 = 1).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}
SPREAD_THRESHOLD = 30.0  # the official analysis's "%>30" of log(1/ν) = max − min of the pre-Sinkhorn logits
SPREAD_BINS = 40


def per_token(coeff: Tensor, trailing: int) -> Tensor:
    """A coefficient [B, S, *t] (dynamic) or [*t] (static), ``trailing`` = len(t) -> [N, *t] in fp64 (N = B·S,
    or 1 for a static coefficient, which broadcasts against the dynamic ones)."""
    c = coeff.detach().double()
    return c.reshape(-1, *c.shape[c.dim() - trailing:])


def distribution(values: Tensor) -> dict:
    """values [N] -> {"mean", "std", "min", "q05", "q25", "median", "q75", "q95", "max"} (population std)."""
    v = values.double().flatten()
    q = torch.quantile(v, torch.tensor(list(QUANTILES.values()), dtype=torch.float64))
    return {"mean": float(v.mean()), "std": float(v.std(correction=0)), "min": float(v.min()),
            **{k: float(x) for k, x in zip(QUANTILES, q)}, "max": float(v.max())}


def stream_distribution(values: Tensor, ideal: float = 1.0) -> dict:
    """values [N, n] (per token, per stream) -> the ``distribution`` keys as lists over the n streams, plus
    "max_abs_deviation" and "mean_abs_deviation": max and mean over tokens and streams of |value − ideal|."""
    v = values.double()
    q = torch.quantile(v, torch.tensor(list(QUANTILES.values()), dtype=torch.float64), dim=0)  # [5, n]
    dev = (v - ideal).abs()
    return {"mean": v.mean(dim=0).tolist(), "std": v.std(dim=0, correction=0).tolist(),
            "min": v.min(dim=0).values.tolist(), **{k: x.tolist() for k, x in zip(QUANTILES, q)},
            "max": v.max(dim=0).values.tolist(),
            "max_abs_deviation": float(dev.max()), "mean_abs_deviation": float(dev.mean())}


def column_sums(mix: Tensor) -> Tensor:
    """mix [N, n, n] -> Σ_i M[i, j] [N, n]: weight each output stream receives (official analysis' column sums)."""
    return mix.sum(dim=-2)


def row_sums(mix: Tensor) -> Tensor:
    """mix [N, n, n] -> Σ_j M[i, j] [N, n]: weight each input stream sends."""
    return mix.sum(dim=-1)


def amax_forward(mix: Tensor) -> Tensor:
    """mix [N, n, n] -> per token max_j Σ_i |M[i, j]| [N]: mHC's forward signal gain (max absolute row sum of
    H_res[out, in]); 1 for a doubly stochastic M, > 1 when some output stream is amplified."""
    return mix.abs().sum(dim=-2).amax(dim=-1)


def amax_backward(mix: Tensor) -> Tensor:
    """mix [N, n, n] -> per token max_i Σ_j |M[i, j]| [N]: mHC's backward gradient gain (max absolute column sum
    of H_res[out, in])."""
    return mix.abs().sum(dim=-1).amax(dim=-1)


def identity_distances(mix: Tensor) -> Tensor:
    """mix [N, n, n] -> ‖M_t − I‖_F per token [N]."""
    eye = torch.eye(mix.shape[-1], dtype=mix.dtype, device=mix.device)
    return (mix - eye).flatten(-2).norm(dim=-1)


def concentrations(weights: Tensor) -> Tensor:
    """read/write weights [N, n] -> per token max_i |w_i| / Σ_i |w_i| [N] (1/n even, 1 = one stream alone)."""
    a = weights.abs()
    return a.amax(dim=-1) / a.sum(dim=-1).clamp_min(1e-300)


def logit_spreads(mix_logits: Tensor, trailing: int) -> Tensor:
    """mix_logits [B, S, *t] -> per token max − min over the t logits [N]. For mHC's [n, n] pre-Sinkhorn logits
    this is log(1/ν) of the stream-collapse paper, ν = min/max entry of exp(logits), which sets how slowly
    Sinkhorn converges; mHC-lite's [n!] permutation logits only set how peaked the softmax is."""
    x = per_token(mix_logits, trailing).flatten(1)  # [N, prod(t)]
    return x.amax(dim=-1) - x.amin(dim=-1)


def spread_summary(spreads: Tensor, threshold: float | None = SPREAD_THRESHOLD, bins: int = SPREAD_BINS) -> dict:
    """spreads [N] -> ``distribution`` + "histogram" {"edges" [bins + 1], "counts" [bins]} on [0, max(spread,
    threshold + 2)] and, with a threshold, "fraction_above_30" (the official analysis' share of spreads > 30)."""
    s = spreads.double().flatten()
    top = max(float(s.max()), (threshold or 0.0) + 2.0)
    counts = torch.histc(s, bins=bins, min=0.0, max=top)
    out = {**distribution(s), "histogram": {"edges": torch.linspace(0.0, top, bins + 1).tolist(),
                                            "counts": [int(c) for c in counts.tolist()]}}
    if threshold is not None:
        out[f"fraction_above_{threshold:g}"] = float((s > threshold).double().mean())
    return out


def suffix_products(mixes: list[Tensor]) -> list[Tensor]:
    """Per-token mixings [N or 1, n, n] of the connections in forward order -> the composite from each connection
    to the last, per token: [P_0, P_1, …] with P_k = M_k @ M_{k+1} @ … @ M_last (fp64). P_0 is the product over
    all connections (what the official analysis takes); P_k is the mHC paper's composite ∏_{i=1}^{L−k} H_res.

    With row-vector streams (output j = Σ_i M[i, j] H_i) applying M_1 then M_2 gives M_1 @ M_2: entry [i, j] of
    P_k is the weight of stream i entering connection k in stream j leaving the last connection.
    """
    if not mixes:
        raise ValueError("suffix_products needs at least one mixing matrix")
    out = [mixes[-1].double()]
    for m in reversed(mixes[:-1]):
        out.append(m.double() @ out[-1])
    return out[::-1]


def depth_product(mixes: list[Tensor]) -> Tensor:
    """Per-token mixings [N or 1, n, n] (or single matrices [n, n]) in forward order -> M_1 @ … @ M_L (fp64)."""
    return suffix_products(mixes)[0]


@lru_cache(maxsize=None)
def sinkhorn_exact_axis() -> str:
    """The axis hizoo's Sinkhorn (``models.sinkhorn.sinkhorn_log``) normalizes last, "row" (Σ_j M[i, j] = 1) or
    "column" (Σ_i M[i, j] = 1): probed once on fixed unbalanced logits with one iteration in fp64, so the
    diagnostics follow the model's Sinkhorn whichever order it uses."""
    from ..models.sinkhorn import sinkhorn_log

    logits = torch.tensor([[0.0, 3.0, -2.0], [1.0, -4.0, 2.0], [5.0, 0.0, -1.0]], dtype=torch.float64)
    m = sinkhorn_log(logits, 1)
    row_err, col_err = float((m.sum(-1) - 1).abs().max()), float((m.sum(-2) - 1).abs().max())
    if row_err < 1e-12 < col_err:
        return "row"
    if col_err < 1e-12 < row_err:
        return "column"
    raise RuntimeError(f"sinkhorn_log: cannot tell the exact axis (row error {row_err}, column error {col_err})")


def exact_axes(residual: str) -> frozenset[str]:
    """Axes whose sums are 1 by construction for a connection kind: mhc_lite both, mhc the Sinkhorn's last one,
    hc (and anything else) none."""
    if residual == "mhc_lite":
        return frozenset({"row", "column"})
    if residual == "mhc":
        return frozenset({sinkhorn_exact_axis()})
    return frozenset()


AXIS_GAIN = {"column": "forward", "row": "backward"}  # Amax gain fixed at 1 by an exact axis (entries >= 0)

__all__ = [
    "per_token", "distribution", "stream_distribution", "column_sums", "row_sums", "amax_forward", "amax_backward",
    "identity_distances", "concentrations", "logit_spreads", "spread_summary", "suffix_products", "depth_product",
    "sinkhorn_exact_axis", "exact_axes", "AXIS_GAIN", "SPREAD_THRESHOLD",
]
