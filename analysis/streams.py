"""Stream-dominance metrics of hyper-connection models: pure functions of streams and connection contexts.

Inputs are what ``HizooForCausalLM.forward(..., output_diagnostics=True)`` returns per layer:
``streams`` [B, S, n, d] after the block, and per branch a connection ctx with ``read`` [B, S, n] or [n],
``write`` [B, S, n] or [n], ``mix`` [B, S, n, n] or [n, n] (mix[i, j] = weight of input stream i in output
stream j) and, for mHC, ``mix_logits``. The mixing metrics are per token (``analysis/mixing.py``); a few
token-mean numbers are kept and named as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.loss import next_token_cross_entropy
from ..models.stream_init import reduce_streams
from ..routing.stats import entropy
from .mixing import (AXIS_GAIN, SPREAD_THRESHOLD, amax_backward, amax_forward, column_sums, concentrations,
                     depth_product, exact_axes, identity_distances, logit_spreads, per_token, row_sums,
                     spread_summary, stream_distribution, suffix_products)
from .records import Record


def token_norm_shares(streams: Tensor, eps: float = 1e-12) -> Tensor:
    """streams [..., n, d] -> each token's norm shares ‖H_j‖ / Σ_k ‖H_k‖ [N, n] (rows sum to 1)."""
    norms = streams.float().norm(dim=-1).reshape(-1, streams.shape[-2])  # [N, n]
    return norms / norms.sum(dim=-1, keepdim=True).clamp_min(eps)


def norm_shares(streams: Tensor, eps: float = 1e-12) -> Tensor:
    """streams [..., n, d] -> per-stream norm share [n]: mean over tokens of ‖H_j‖ / Σ_k ‖H_k‖ (sums to 1)."""
    return token_norm_shares(streams, eps).mean(dim=0)


def dominant_share(shares: Tensor) -> float:
    """shares [n] -> the largest share (1/n when even, 1 when one stream carries all the norm)."""
    return float(shares.max())


def dominant_share_per_token(streams: Tensor, eps: float = 1e-12) -> float:
    """streams [..., n, d] -> mean over tokens of each token's largest norm share (≥ the largest token-mean
    share; higher when different tokens are dominated by different streams)."""
    return float(token_norm_shares(streams, eps).amax(dim=-1).double().mean())


def effective_streams(shares: Tensor) -> float:
    """shares [n] -> exp(entropy of the shares): n when even, 1 when one stream carries everything."""
    p = shares.double() / shares.double().sum()
    return float(entropy(p).exp())


def mean_pairwise_cosine(streams: Tensor) -> float:
    """streams [..., n, d] -> mean over tokens and over pairs j < k of cos(H_j, H_k) (1 = identical directions;
    1.0 for a single stream by convention: nothing to tell apart)."""
    n = streams.shape[-2]
    if n < 2:
        return 1.0
    unit = F.normalize(streams.float().reshape(-1, n, streams.shape[-1]), dim=-1)  # [N, n, d]
    gram = unit @ unit.transpose(-1, -2)  # [N, n, n]
    iu = torch.triu_indices(n, n, offset=1)
    return float(gram[:, iu[0], iu[1]].mean())


def token_mean(coeff: Tensor, trailing: int) -> Tensor:
    """Average a coefficient over its leading token dims, keeping ``trailing`` dims: [B, S, *t] or [*t] -> [*t]."""
    coeff = coeff.detach().float()
    return coeff.reshape(-1, *coeff.shape[coeff.dim() - trailing:]).mean(dim=0)


def weight_concentration(weights: Tensor) -> float:
    """read/write weights [n] -> share of the largest |weight| in Σ|weights| (1/n when even, 1 when one stream
    is read/written alone)."""
    a = weights.abs().double()
    return float(a.max() / a.sum().clamp_min(1e-300))


def identity_distance(mix: Tensor) -> float:
    """mix [n, n] -> ‖M − I‖_F."""
    n = mix.shape[-1]
    return float((mix.double() - torch.eye(n, dtype=torch.float64, device=mix.device)).norm())


def off_diagonal_mass(mix: Tensor) -> float:
    """mix [n, n] -> Σ_{i≠j} |M_ij| / Σ_ij |M_ij| (0 for a diagonal mixing)."""
    a = mix.abs().double()
    return float((a.sum() - a.diagonal().sum()) / a.sum().clamp_min(1e-300))


def infer_residual(diagnostics) -> str:
    """The connection kind from the ctx keys: "mhc" (mix_logits shaped like mix), "mhc_lite" (n! permutation
    logits), "hc" (a mix without logits) or "none"."""
    for layer in diagnostics:
        for branch in ("attn", "ffn"):
            ctx = layer.get(branch) or {}
            if "mix" in ctx:
                if "mix_logits" not in ctx:
                    return "hc"
                return "mhc" if ctx["mix_logits"].shape == ctx["mix"].shape else "mhc_lite"
    return "none"


@dataclass(kw_only=True)
class BranchMetrics(Record):
    """One branch's (attn or ffn) connection metrics (``branch_metrics``); None: not measured for the kind
    (a plain residual has none, a static connection no per-token spread, an exact axis no sums or gain)."""

    read: list[float] | None = None  # [n] token-mean read weights
    read_concentration: float | None = None
    read_concentration_per_token: float | None = None
    write: list[float] | None = None  # [n]
    write_concentration: float | None = None
    write_concentration_per_token: float | None = None
    mix: list[list[float]] | None = None  # [n, n] token-mean mixing
    mix_identity_distance: float | None = None  # ‖M̄ − I‖_F of the token-mean mixing
    mix_identity_distance_per_token: float | None = None  # token mean of ‖M_t − I‖_F
    mix_off_diagonal_mass: float | None = None
    mix_column_sums_per_token: dict | None = None  # ``mixing.stream_distribution``
    mix_amax_forward: float | None = None
    mix_amax_forward_max: float | None = None
    mix_row_sums_per_token: dict | None = None
    mix_amax_backward: float | None = None
    mix_amax_backward_max: float | None = None
    mix_logit_spread: float | None = None
    mix_logit_spread_max: float | None = None
    mix_logit_spread_above_30: float | None = None

    # logged as TensorBoard scalars ``streams/layerI/<branch>/<name>``
    SCALARS: ClassVar[tuple[str, ...]] = (
        "read_concentration", "read_concentration_per_token", "write_concentration", "write_concentration_per_token",
        "mix_identity_distance", "mix_identity_distance_per_token", "mix_off_diagonal_mass", "mix_amax_forward",
        "mix_amax_forward_max", "mix_amax_backward", "mix_amax_backward_max", "mix_logit_spread",
        "mix_logit_spread_max", "mix_logit_spread_above_30")

    def scalars(self) -> dict[str, float]:
        out = {k: getattr(self, k) for k in self.SCALARS if getattr(self, k) is not None}
        for axis in ("column", "row"):
            sums = getattr(self, f"mix_{axis}_sums_per_token")
            if sums is not None:
                out[f"mix_{axis}_sums_max_abs_deviation"] = sums["max_abs_deviation"]
        return out


@dataclass(kw_only=True)
class StreamLayerMetrics(Record):
    """The residual streams after one layer and the layer's two connections."""

    norm_share: list[float]  # [n] token-mean share of the residual norm per stream
    dominant_share: float
    dominant_share_per_token: float | None = None
    dominant_stream: int
    effective_streams: float
    mean_cosine: float
    attn: BranchMetrics = field(default_factory=BranchMetrics)
    ffn: BranchMetrics = field(default_factory=BranchMetrics)

    NESTED: ClassVar[dict[str, type]] = {"attn": BranchMetrics, "ffn": BranchMetrics}
    SCALARS: ClassVar[tuple[str, ...]] = ("dominant_share", "dominant_share_per_token", "effective_streams",
                                          "mean_cosine")

    def to_dict(self) -> dict:  # a branch without metrics stays in the JSON as {}
        out = super().to_dict()
        out["attn"], out["ffn"] = self.attn.to_dict(), self.ffn.to_dict()
        return out


@dataclass(kw_only=True)
class MixingMetrics(Record):
    """Per-token mixings of all connections pooled: sums (``stream_distribution``) and logit spreads
    (``spread_summary``); None where the kind fixes the axis or has no logits."""

    column_sums_per_token: dict | None = None
    row_sums_per_token: dict | None = None
    logit_spread: dict | None = None


@dataclass(kw_only=True)
class DepthMetrics(Record):
    """The per-token product of the mixings over depth (mHC paper, Fig. 3 and 7)."""

    connections: int
    product_mean: list[list[float]]  # [n, n]
    column_sums_per_token: dict | None = None
    amax_forward: float | None = None
    amax_forward_max: float | None = None
    suffix_amax_forward: list[float] | None = None  # per connection k, the gain from k to the last
    row_sums_per_token: dict | None = None
    amax_backward: float | None = None
    amax_backward_max: float | None = None
    suffix_amax_backward: list[float] | None = None


@dataclass(kw_only=True)
class StreamMetrics(Record):
    """Every stream metric of one forward (``stream_metrics``), with the optional ablation (``stream_ablation``)
    and LSS scales (``lss_scales``) that ``collect`` adds."""

    n_streams: int
    residual: str
    layers: list[StreamLayerMetrics]
    exact_by_construction: dict[str, str] | None = None  # metric family -> why it is 1 for every token
    mixing: MixingMetrics | None = None
    depth: DepthMetrics | None = None
    ablation: dict | None = None  # {"stream_reduce", "base_loss", "loss_increase": [n]}
    lss_scales: dict | None = None  # {"mean", "std", "mean_abs"}: [n] each

    NESTED: ClassVar[dict[str, type]] = {"layers": StreamLayerMetrics, "mixing": MixingMetrics,
                                         "depth": DepthMetrics}

    def connections(self) -> list[tuple[int, str, BranchMetrics]]:
        """(layer, branch, metrics) of every connection with a mixing."""
        return [(i, b, getattr(layer, b)) for i, layer in enumerate(self.layers) for b in ("attn", "ffn")
                if getattr(layer, b).mix is not None]

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars ``streams/…`` (layers 0-based)."""
        out: dict[str, float] = {}
        for i, layer in enumerate(self.layers):
            for key in StreamLayerMetrics.SCALARS:
                if getattr(layer, key) is not None:
                    out[f"streams/layer{i}/{key}"] = getattr(layer, key)
            for b in ("attn", "ffn"):
                for key, value in getattr(layer, b).scalars().items():
                    out[f"streams/layer{i}/{b}/{key}"] = value
        mixing = self.mixing or MixingMetrics()
        for axis in ("column", "row"):
            sums = getattr(mixing, f"{axis}_sums_per_token")
            if sums is not None:
                out[f"streams/mix_{axis}_sums/max_abs_deviation"] = sums["max_abs_deviation"]
                out[f"streams/mix_{axis}_sums/mean_abs_deviation"] = sums["mean_abs_deviation"]
        if mixing.logit_spread is not None:
            for key in ("mean", "median", "q95", "max", "fraction_above_30"):
                if key in mixing.logit_spread:
                    out[f"streams/logit_spread/{key}"] = mixing.logit_spread[key]
        if self.depth is not None:
            for name in ("forward", "backward"):
                if getattr(self.depth, f"amax_{name}") is not None:
                    out[f"streams/amax_{name}"] = getattr(self.depth, f"amax_{name}")
                    out[f"streams/amax_{name}_max"] = getattr(self.depth, f"amax_{name}_max")
            for axis in ("column", "row"):
                sums = getattr(self.depth, f"{axis}_sums_per_token")
                if sums is not None:
                    out[f"streams/product_{axis}_sums/max_abs_deviation"] = sums["max_abs_deviation"]
        if self.ablation is not None:
            for j, inc in enumerate(self.ablation["loss_increase"]):
                out[f"streams/ablation/stream{j}"] = inc
        if self.lss_scales is not None:
            for j, m in enumerate(self.lss_scales["mean"]):
                out[f"streams/lss_scale/stream{j}"] = m
        return out

    def study_metrics(self) -> dict:
        """The study's per-run stream numbers (layer and connection means; see ``DiagnosticsReport.study_metrics``)."""
        layers = self.layers
        out: dict = {
            "dominant_share": fmean(layer.dominant_share for layer in layers),
            "dominant_share_max": max(layer.dominant_share for layer in layers),
            "effective_streams": fmean(layer.effective_streams for layer in layers),
            "stream_cosine": fmean(layer.mean_cosine for layer in layers),
        }
        conns = [m for _, _, m in self.connections()]
        if conns:
            out["mix_identity_distance"] = fmean(m.mix_identity_distance for m in conns)  # of the token-mean M
            if conns[0].mix_identity_distance_per_token is not None:
                out["mix_identity_distance_per_token"] = fmean(m.mix_identity_distance_per_token for m in conns)
        mixing, depth = self.mixing or MixingMetrics(), self.depth
        for axis in ("column", "row"):
            sums = getattr(mixing, f"{axis}_sums_per_token")
            if sums is not None:
                out[f"{axis}_sum_deviation"] = sums["mean_abs_deviation"]
        if mixing.logit_spread is not None and "fraction_above_30" in mixing.logit_spread:
            out["logit_spread_above_30"] = mixing.logit_spread["fraction_above_30"]
        for name in ("forward", "backward"):
            if depth is not None and getattr(depth, f"amax_{name}") is not None:
                out[f"amax_{name}"] = getattr(depth, f"amax_{name}")
        exact = self.exact_by_construction or {}
        fixed = [key for family, key in (("column_sums", "column_sum_deviation"), ("row_sums", "row_sum_deviation"),
                                         ("amax_forward", "amax_forward"), ("amax_backward", "amax_backward"))
                 if family in exact]
        if fixed:
            out["exact_by_construction"] = fixed
        if self.ablation is not None:
            out["ablation_max"] = max(self.ablation["loss_increase"])
            out["ablation_min"] = min(self.ablation["loss_increase"])
        return out


def _weights_metrics(out: dict, name: str, weights: Tensor) -> None:
    w = per_token(weights, 1)  # [N, n]
    out[name] = w.mean(dim=0).tolist()
    out[f"{name}_concentration"] = weight_concentration(w.mean(dim=0))  # of the token-mean weights
    out[f"{name}_concentration_per_token"] = float(concentrations(w).mean())  # token mean of each token's


def branch_metrics(ctx: dict, exact: frozenset[str] = frozenset(), sinkhorn: bool | None = None) -> dict:
    """Metrics of one branch's connection ctx (missing keys are skipped; {} for a plain residual).

    ``exact``: axes ("row", "column") whose sums are 1 by construction (``mixing.exact_axes``): their sums and
    Amax gain are left out. ``sinkhorn``: the logits feed Sinkhorn (mHC), so the share of spreads above 30 is
    reported; None infers it from the logits having the mix's shape (a ctx without a mix needs it to read
    [.., n, n] logits).

    Token-mean keys (the coefficients averaged over tokens first): "read", "write", "mix" and their
    "…_concentration", "mix_identity_distance", "mix_off_diagonal_mass". Per-token keys (each token's value,
    then summarized): "…_concentration_per_token" and "mix_identity_distance_per_token" (token means; a token
    mean of the coefficients can look even or like the identity while every token is concentrated or far
    from it), "mix_column_sums_per_token" / "mix_row_sums_per_token" (``stream_distribution``), "mix_amax_forward"
    / "mix_amax_backward" (token mean of the per-token gain, as the mHC paper plots it) with "…_max" (the worst
    token), "mix_logit_spread" (token mean) with "…_max" and "mix_logit_spread_above_30".
    """
    out: dict = {}
    for name in ("read", "write"):
        if name in ctx:
            _weights_metrics(out, name, ctx[name])
    if "mix" in ctx:
        mix = per_token(ctx["mix"], 2)  # [N, n, n]
        mean = mix.mean(dim=0)
        out["mix"] = mean.tolist()
        out["mix_identity_distance"] = identity_distance(mean)
        out["mix_identity_distance_per_token"] = float(identity_distances(mix).mean())
        out["mix_off_diagonal_mass"] = off_diagonal_mass(mean)
        for axis, sums, gain in (("column", column_sums, amax_forward), ("row", row_sums, amax_backward)):
            if axis in exact:
                continue
            out[f"mix_{axis}_sums_per_token"] = stream_distribution(sums(mix))
            g = gain(mix)
            out[f"mix_amax_{AXIS_GAIN[axis]}"] = float(g.mean())
            out[f"mix_amax_{AXIS_GAIN[axis]}_max"] = float(g.max())
    if "mix_logits" in ctx:
        # mHC's [.., n, n] logits or mHC-lite's [.., n!]: told apart by the mix's shape, else by ``sinkhorn``
        square = ctx["mix_logits"].shape == ctx["mix"].shape if "mix" in ctx else bool(sinkhorn)
        spreads = logit_spreads(ctx["mix_logits"], 2 if square else 1)
        out["mix_logit_spread"] = float(spreads.mean())
        out["mix_logit_spread_max"] = float(spreads.max())
        if sinkhorn if sinkhorn is not None else square:
            out["mix_logit_spread_above_30"] = float((spreads > SPREAD_THRESHOLD).double().mean())
    return out


def exact_by_construction(residual: str, exact: frozenset[str]) -> dict[str, str]:
    """{metric family: why it is 1 for every token} for the exact axes of a connection kind; these metrics
    ("<axis>_sums" per connection, pooled and of the product over depth; "amax_<forward|backward>") are left out
    of the report. With non-negative entries an exact axis also fixes its Amax gain."""
    out: dict[str, str] = {}
    for axis in sorted(exact):
        sums = "Σ_i M[i, j]" if axis == "column" else "Σ_j M[i, j]"
        if residual == "mhc_lite":
            why = "mHC-lite's mixing is a convex combination of permutation matrices"
        elif residual == "mhc":
            why = f"mHC's Sinkhorn normalizes {sums} last"
        else:
            why = "exact by construction"
        why += f": {sums} = 1 per token, for every connection and every product over depth"
        out[f"{axis}_sums"] = why
        out[f"amax_{AXIS_GAIN[axis]}"] = why + " (entries ≥ 0, so the gain is 1)"
    return out


def stream_metrics(diagnostics: tuple[dict, ...] | list[dict], residual: str | None = None) -> dict:
    """Per-layer stream metrics from a model's ``diagnostics`` output.

    ``residual``: the connection kind (config.residual); None infers it from the ctx keys. Returns
    {"n_streams", "residual", "layers": [per layer {"norm_share", "dominant_share", "dominant_share_per_token",
    "dominant_stream", "effective_streams", "mean_cosine", "attn": branch metrics, "ffn": branch metrics}],
    "exact_by_construction": {metric family: reason} (absent for HC),
    "mixing": per-token mixings of all connections pooled (the official analysis' box plots): "column_sums_per_token",
    "row_sums_per_token" (``stream_distribution``), "logit_spread" (``spread_summary``; "fraction_above_30" for mHC),
    "depth": the per-token composite of the mixings over depth: "connections", "product_mean" (token mean of the
    per-token product), "column_sums_per_token", "row_sums_per_token", "amax_forward" / "amax_backward" (token
    mean of the per-token gain of the full product, as in the mHC paper's Fig. 3 and 7) with "…_max" (the worst
    token), "suffix_amax_forward" / "suffix_amax_backward" (per connection k, the token-mean gain of the composite
    from k to the last connection: the mHC paper's curve over depth)}. Metrics that are 1 by construction for the
    kind are left out and named in "exact_by_construction".
    """
    kind = residual or infer_residual(diagnostics)
    exact = exact_axes(kind)
    sinkhorn = kind == "mhc"
    layers, mixes, spreads = [], [], []
    n = None
    for layer in diagnostics:
        streams = layer["streams"]  # [B, S, n, d]
        n = streams.shape[-2]
        per_token_shares = token_norm_shares(streams)  # [N, n]
        shares = per_token_shares.mean(dim=0)
        entry = {
            "norm_share": shares.tolist(),
            "dominant_share": dominant_share(shares),
            "dominant_share_per_token": float(per_token_shares.amax(dim=-1).double().mean()),
            "dominant_stream": int(shares.argmax()),
            "effective_streams": effective_streams(shares),
            "mean_cosine": mean_pairwise_cosine(streams),
        }
        for branch in ("attn", "ffn"):
            ctx = layer.get(branch) or {}
            entry[branch] = branch_metrics(ctx, exact, sinkhorn)
            if "mix" in ctx:
                mixes.append(per_token(ctx["mix"], 2))  # [N, n, n]
                if "mix_logits" in ctx:
                    spreads.append(logit_spreads(ctx["mix_logits"], 2 if sinkhorn else 1))
        layers.append(entry)
    out: dict = {"n_streams": n, "residual": kind, "layers": layers}
    if exact:
        out["exact_by_construction"] = exact_by_construction(kind, exact)
    if mixes:
        pooled = torch.cat(mixes)  # [C·N, n, n]
        mixing: dict = {}
        for axis, sums in (("column", column_sums), ("row", row_sums)):
            if axis not in exact:
                mixing[f"{axis}_sums_per_token"] = stream_distribution(sums(pooled))
        if spreads:
            mixing["logit_spread"] = spread_summary(torch.cat(spreads), SPREAD_THRESHOLD if sinkhorn else None)
        out["mixing"] = mixing
        suffix = suffix_products(mixes)  # [P_0 … P_{C-1}], each [N, n, n]
        product = suffix[0]
        depth: dict = {"connections": len(mixes), "product_mean": product.mean(dim=0).tolist()}
        for axis, sums, gain in (("column", column_sums, amax_forward), ("row", row_sums, amax_backward)):
            if axis in exact:
                continue
            name = AXIS_GAIN[axis]
            depth[f"{axis}_sums_per_token"] = stream_distribution(sums(product))
            g = gain(product)
            depth[f"amax_{name}"] = float(g.mean())
            depth[f"amax_{name}_max"] = float(g.max())
            depth[f"suffix_amax_{name}"] = [float(gain(p).mean()) for p in suffix]
        out["depth"] = depth
    return out


def lss_scales(model) -> dict | None:
    """Learned Stream Scaling λ [n, d] of ``model.model.expand.stream_scale``: per stream mean, std and the
    mean |λ| (None when the model has no LSS init)."""
    expand = getattr(getattr(model, "model", model), "expand", None)
    scale = getattr(expand, "stream_scale", None)
    if scale is None:
        return None
    s = scale.detach().float()  # [n, d]
    return {"mean": s.mean(dim=-1).tolist(), "std": s.std(dim=-1, correction=0).tolist(),
            "mean_abs": s.abs().mean(dim=-1).tolist()}


def reduce_without(streams: Tensor, norm, keep: Tensor, stream_reduce: str) -> Tensor:
    """streams [B, S, n, d], keep [n] (1 = keep, 0 = ablate) -> hidden [B, S, d] as the model's output forms it:
    "norm_sum" Σ_s keep_s · norm(H_s) (the final norm applied to each stream, the official hc-stream-collapse
    model), "sum_norm" norm(Σ_s keep_s · H_s)."""
    masked = streams * keep.to(streams.dtype).view(1, 1, -1, 1)  # norm(0) = 0: a zeroed stream adds nothing
    return reduce_streams(masked, norm, stream_reduce)


@torch.no_grad()
def stream_ablation(model, streams: Tensor, input_ids: Tensor) -> dict:
    """Loss increase when stream j's contribution to the output is zeroed.

    streams [B, S, n, d]: the last layer's output streams; input_ids [B, S] give the next-token targets. The
    hidden state follows ``model.config.stream_reduce`` (``reduce_without``; a config without the field is
    "sum_norm", the earlier hizoo model), then ``model.lm_head``. Returns {"stream_reduce", "base_loss",
    "loss_increase": [n]} (CE in nats, no aux losses).
    """
    n = streams.shape[-2]
    stream_reduce = getattr(model.config, "stream_reduce", "sum_norm")

    def loss_of(keep: Tensor) -> float:
        hidden = reduce_without(streams, model.model.norm, keep, stream_reduce)  # [B, S, d]
        return float(next_token_cross_entropy(model.lm_head(hidden), input_ids))  # logits [B, S, V]

    base = loss_of(torch.ones(n, device=streams.device))
    increases = []
    for j in range(n):
        keep = torch.ones(n, device=streams.device)
        keep[j] = 0
        increases.append(loss_of(keep) - base)
    return {"stream_reduce": stream_reduce, "base_loss": base, "loss_increase": increases}


__all__ = [
    "BranchMetrics", "StreamLayerMetrics", "MixingMetrics", "DepthMetrics", "StreamMetrics",
    "norm_shares", "token_norm_shares", "dominant_share", "dominant_share_per_token", "effective_streams",
    "mean_pairwise_cosine",
    "weight_concentration", "identity_distance", "off_diagonal_mass", "infer_residual", "branch_metrics",
    "exact_by_construction", "depth_product", "stream_metrics", "lss_scales", "reduce_without", "stream_ablation",
    "token_mean",
]
