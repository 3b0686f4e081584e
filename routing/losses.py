"""Router auxiliary losses shared by the routers (unscaled: routers multiply by their coefficients)."""

from __future__ import annotations

import torch
from torch import Tensor

from .stats import expert_counts


def expert_fraction(expert_idx: Tensor, num_experts: int) -> Tensor:
    """f_i = (tokens routing to expert i) / T, so Σ_i f_i = K: the normalization of ``transformers``'
    ``load_balancing_loss_func`` and of the Hi-MoE reference code (f per token, not per slot).
    [T, K] -> [E] fp32 (no gradient)."""
    return expert_counts(expert_idx, num_experts).float() / expert_idx.shape[0]


def switch_load_balance_loss(probs: Tensor, expert_idx: Tensor, num_experts: int,
                             fraction: Tensor | None = None) -> Tensor:
    """Switch Transformer load balancing (Fedus et al. 2021, Eq. 4) in its top-K form: E · Σ_i f_i · P_i,
    f_i = (tokens routing to i) / T (Σ f = K, as ``transformers``' OLMoE and the Hi-MoE code), P_i the mean
    router probability of expert i. Equals K for a perfectly uniform router. ``fraction`` overrides f
    (e.g. the global-batch f, normalized the same way)."""
    f = expert_fraction(expert_idx, num_experts) if fraction is None else fraction  # [E]
    P = probs.float().mean(dim=0)  # [E]
    return num_experts * (f * P).sum()


def sequence_balance_loss(scores: Tensor, expert_idx: Tensor, num_experts: int, seq_len: int) -> Tensor:
    """DeepSeek-V3 sequence-wise balance loss (arXiv 2412.19437, Eqs. 17-20), unscaled (× α by the router):
    per sequence of T' = seq_len tokens, f_i = E/(K·T') Σ_t 1[i chosen for t], P_i = 1/T' Σ_t s'_ti with
    s' = s / Σ_j s_j the normalized affinities; loss = Σ_i f_i P_i, averaged over the sequences.

    scores [T, E] (sigmoid affinities, with gradient), expert_idx [T, K], T = B·seq_len tokens in sequence order.
    """
    T, K = expert_idx.shape
    if seq_len <= 0 or T % seq_len != 0:
        raise ValueError(f"seq_len={seq_len} must divide the number of tokens T={T}")
    B = T // seq_len
    chosen = torch.zeros(T, num_experts, device=scores.device).scatter_(1, expert_idx, 1.0)  # [T, E]
    f = chosen.view(B, seq_len, num_experts).mean(dim=1) * (num_experts / K)  # [B, E]
    s_norm = scores.float() / scores.float().sum(dim=-1, keepdim=True)  # [T, E]
    P = s_norm.view(B, seq_len, num_experts).mean(dim=1)  # [B, E]
    return (f * P).sum(dim=-1).mean()


def z_loss(logits: Tensor) -> Tensor:
    """Router z-loss (ST-MoE, Zoph et al. 2022, Eq. 5): mean_t (logsumexp_i g_ti)²."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()
