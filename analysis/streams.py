"""Stream-dominance metrics of hyper-connection models: pure functions of streams and connection contexts.

Inputs are what ``HizooForCausalLM.forward(..., output_diagnostics=True)`` returns per layer:
``streams`` [B, S, n, d] after the block, and per branch a connection ctx with ``read`` [B, S, n] or [n],
``write`` [B, S, n] or [n], ``mix`` [B, S, n, n] or [n, n] (mix[i, j] = weight of input stream i in output
stream j) and, for mHC, ``mix_logits``. Token-dependent coefficients are averaged over tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.stream_init import reduce_streams


def norm_shares(streams: Tensor, eps: float = 1e-12) -> Tensor:
    """streams [..., n, d] -> per-stream norm share [n]: mean over tokens of ‖H_j‖ / Σ_k ‖H_k‖ (sums to 1)."""
    norms = streams.float().norm(dim=-1)  # [..., n]
    shares = norms / norms.sum(dim=-1, keepdim=True).clamp_min(eps)
    return shares.reshape(-1, streams.shape[-2]).mean(dim=0)


def dominant_share(shares: Tensor) -> float:
    """shares [n] -> the largest share (1/n when even, 1 when one stream carries all the norm)."""
    return float(shares.max())


def effective_streams(shares: Tensor) -> float:
    """shares [n] -> exp(entropy of the shares): n when even, 1 when one stream carries everything."""
    p = shares.double() / shares.double().sum()
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum()
    return float(h.exp())


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


def logit_spread(mix_logits: Tensor, trailing: int = 2) -> float:
    """mix_logits [B, S, *t] or [*t] with ``trailing`` = len(t) (2 for mHC's [n, n] pre-Sinkhorn logits, 1 for
    mHC-lite's [n!] permutation logits) -> mean over tokens of (max − min) of the logits."""
    x = mix_logits.detach().float()
    flat = x.reshape(-1, x[(0,) * (x.dim() - trailing)].numel())  # [N, prod(t)]
    return float((flat.max(dim=-1).values - flat.min(dim=-1).values).mean())


def amax_gain(product: Tensor) -> float:
    """product [n, n] (of mixings over depth) -> max(max_i Σ_j |P_ij|, max_j Σ_i |P_ij|) (mHC's Amax gain
    magnitude; 1 for a doubly stochastic product, growing when mixing amplifies the residual)."""
    a = product.abs().double()
    return float(torch.maximum(a.sum(dim=0).max(), a.sum(dim=1).max()))


def branch_metrics(ctx: dict) -> dict:
    """Metrics of one branch's connection ctx (missing keys are skipped; {} for a plain residual)."""
    out: dict = {}
    if "read" in ctx:
        read = token_mean(ctx["read"], 1)
        out["read"] = read.tolist()
        out["read_concentration"] = weight_concentration(read)
    if "write" in ctx:
        write = token_mean(ctx["write"], 1)
        out["write"] = write.tolist()
        out["write_concentration"] = weight_concentration(write)
    if "mix" in ctx:
        mix = token_mean(ctx["mix"], 2)  # [n, n]
        out["mix"] = mix.tolist()
        out["mix_identity_distance"] = identity_distance(mix)
        out["mix_off_diagonal_mass"] = off_diagonal_mass(mix)
        out["mix_column_sums"] = mix.sum(dim=0).tolist()
    if "mix_logits" in ctx:
        same = "mix" in ctx and ctx["mix_logits"].shape == ctx["mix"].shape
        out["mix_logit_spread"] = logit_spread(ctx["mix_logits"], 2 if same else 1)
    return out


def depth_product(mixes: list[Tensor]) -> Tensor:
    """Token-mean mixings [n, n] in forward order -> their composition over depth [n, n].

    With row-vector streams (output j = Σ_i M[i, j] H_i) applying M_1 then M_2 gives M_1 @ M_2, so the product
    is M_1 @ M_2 @ … @ M_L; entry [i, j] = weight of the first layer's input stream i in the last output j.
    """
    if not mixes:
        raise ValueError("depth_product needs at least one mixing matrix")
    out = mixes[0].double()
    for m in mixes[1:]:
        out = out @ m.double()
    return out


def stream_metrics(diagnostics: tuple[dict, ...] | list[dict]) -> dict:
    """Per-layer stream metrics from a model's ``diagnostics`` output.

    Returns {"n_streams", "layers": [per layer {"norm_share", "dominant_share", "effective_streams",
    "mean_cosine", "attn": branch metrics, "ffn": branch metrics}], "depth": product metrics or absent}.
    """
    layers, mixes = [], []
    n = None
    for layer in diagnostics:
        streams = layer["streams"]  # [B, S, n, d]
        n = streams.shape[-2]
        shares = norm_shares(streams)
        entry = {
            "norm_share": shares.tolist(),
            "dominant_share": dominant_share(shares),
            "dominant_stream": int(shares.argmax()),
            "effective_streams": effective_streams(shares),
            "mean_cosine": mean_pairwise_cosine(streams),
        }
        for branch in ("attn", "ffn"):
            ctx = layer.get(branch) or {}
            entry[branch] = branch_metrics(ctx)
            if "mix" in ctx:
                mixes.append(token_mean(ctx["mix"], 2))
        layers.append(entry)
    out: dict = {"n_streams": n, "layers": layers}
    if mixes:
        product = depth_product(mixes)
        out["depth"] = {
            "product": product.tolist(),
            "product_column_sums": product.sum(dim=0).tolist(),
            "amax_gain": amax_gain(product),
        }
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


@torch.no_grad()
def stream_ablation(model, streams: Tensor, input_ids: Tensor) -> dict:
    """Loss increase when one stream is zeroed at the reduction.

    streams [B, S, n, d]: the last layer's output streams; input_ids [B, S] give the next-token targets.
    The model reduces them with ``reduce_streams`` (its ``stream_reduce``: Σ_s norm(H_s) by default) before
    ``model.lm_head``; here stream j is zeroed before that reduction, which under ``norm_sum`` removes its
    normalized contribution (norm(0) = 0). Returns {"base_loss", "loss_increase": [n]} (CE in nats, no aux
    losses).
    """
    n = streams.shape[-2]
    targets = input_ids[:, 1:].flatten()
    how = getattr(model.config, "stream_reduce", "sum_norm")

    def loss_of(mask: Tensor) -> float:
        masked = streams * mask.view(1, 1, n, 1).to(streams.dtype)  # [B, S, n, d]
        logits = model.lm_head(reduce_streams(masked, model.model.norm, how))[:, :-1]  # [B, S-1, V]
        return float(F.cross_entropy(logits.flatten(0, 1).float(), targets))

    base = loss_of(torch.ones(n, device=streams.device))
    increases = []
    for j in range(n):
        mask = torch.ones(n, device=streams.device)
        mask[j] = 0
        increases.append(loss_of(mask) - base)
    return {"base_loss": base, "loss_increase": increases}


__all__ = [
    "norm_shares", "dominant_share", "effective_streams", "mean_pairwise_cosine", "weight_concentration",
    "identity_distance", "off_diagonal_mass", "logit_spread", "amax_gain", "branch_metrics", "depth_product",
    "stream_metrics", "lss_scales", "stream_ablation", "token_mean",
]
