"""Softmax top-K routing (Switch / Mixtral / OLMoE) with Switch load balancing and router z-loss."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Router, RoutingResult
from .losses import switch_load_balance_loss, z_loss


class TopKRouter(Router):
    """p = softmax(g); pick the K largest p; combine weights are those p, renormalized when
    ``norm_topk_prob`` (Mixtral) and raw otherwise (OLMoE).

    Losses: Switch LB ``coef · E · Σ_i f_i P_i`` (Switch Transformer, Eq. 4) and z-loss
    ``coef · mean_t logsumexp(g_t)²`` (ST-MoE, Eq. 5).
    """

    def __init__(self, num_experts: int, hidden_size: int, top_k: int, norm_topk_prob: bool = False,
                 aux_loss_coef: float = 0.01, z_loss_coef: float = 0.001):
        super().__init__(num_experts, hidden_size, top_k)
        self.norm_topk_prob = norm_topk_prob
        self.aux_loss_coef = aux_loss_coef
        self.z_loss_coef = z_loss_coef

    def forward(self, x: Tensor) -> RoutingResult:
        logits = self.logits(x)  # [T, E] fp32
        probs = logits.softmax(dim=-1)  # [T, E]
        top_p, expert_idx = probs.topk(self.top_k, dim=-1)  # [T, K]
        if self.norm_topk_prob:
            top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        aux = {}
        if self.aux_loss_coef > 0:
            aux["load_balance"] = self.aux_loss_coef * switch_load_balance_loss(probs, expert_idx, self.num_experts)
        if self.z_loss_coef > 0:
            aux["z"] = self.z_loss_coef * z_loss(logits)
        return RoutingResult(expert_idx, top_p.to(x.dtype), logits, aux)
