"""Router auxiliary losses shared by the routers (unscaled: routers multiply by their coefficients)."""

from __future__ import annotations

import torch
from torch import Tensor


def expert_fraction(expert_idx: Tensor, num_experts: int) -> Tensor:
    """f_i: fraction of the T·K routing slots that chose expert i.  [T, K] -> [E] fp32 (no gradient)."""
    counts = torch.bincount(expert_idx.flatten(), minlength=num_experts).float()
    return counts / expert_idx.numel()


def switch_load_balance_loss(probs: Tensor, expert_idx: Tensor, num_experts: int) -> Tensor:
    """Switch Transformer load balancing (Fedus et al. 2021, Eq. 4): E · Σ_i f_i · P_i,
    f_i the fraction of routing slots sent to expert i, P_i the mean router probability of expert i.
    Equals 1 for a perfectly uniform router."""
    f = expert_fraction(expert_idx, num_experts)  # [E]
    P = probs.float().mean(dim=0)  # [E]
    return num_experts * (f * P).sum()


def z_loss(logits: Tensor) -> Tensor:
    """Router z-loss (ST-MoE, Zoph et al. 2022, Eq. 5): mean_t (logsumexp_i g_ti)²."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()
