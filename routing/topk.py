"""Softmax top-K routing (Switch / Mixtral / OLMoE) with Switch load balancing and router z-loss."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import initialization as init

from .base import Router, RoutingResult
from .losses import switch_load_balance_loss, z_loss
from .stats import expert_counts


class TopKRouter(Router):
    """p = softmax(g); pick the K largest p; combine weights are those p, renormalized when
    ``norm_topk_prob`` (Mixtral) and raw otherwise (OLMoE).

    Losses: Switch LB ``coef · E · Σ_i f_i P_i`` with f_i = (tokens routing to i) / T, so Σ f = K, and P from
    the full softmax (Switch Transformer, Eq. 4; the normalization of ``transformers``'
    ``load_balancing_loss_func``), and z-loss ``coef · mean_t logsumexp(g_t)²`` (ST-MoE, Eq. 5).
    ``transformers``' OLMoE computes no z-loss (its OLMoE training used 0.001, paper Table 11).

    Global-batch balance (``global_balance=True``, cf. Qiu et al. 2025, arXiv 2501.11873): in training, f is
    computed over all tokens of the optimizer step seen so far, not over this micro-batch only:
    - the slot counts of each micro-batch are summed over data-parallel ranks (``all_reduce`` when
      ``torch.distributed`` is initialized; f carries no gradient, so this is a plain sum of counts);
    - they accumulate in the buffer ``global_counts`` over the micro-batches of the step, so the k-th
      micro-batch uses f of micro-batches 1..k (the last one uses the full global batch), normalized by the
      tokens counted so far (Σ f = K, as the local f);
    - ``end_of_step()`` (called once per optimizer step by ``models.moe.update_router_states``) clears it.
    P stays the local mean probability (the gradient path). A gradient-checkpointing recompute (marked by
    ``recompute_aware``, as HizooBlock's checkpointing does) does not count again: it reuses the counts of its
    original forward. Eval forwards use the local f.
    """

    def __init__(self, num_experts: int, hidden_size: int, top_k: int, norm_topk_prob: bool = False,
                 aux_loss_coef: float = 0.01, z_loss_coef: float = 0.001, global_balance: bool = False,
                 **capacity):
        super().__init__(num_experts, hidden_size, top_k, **capacity)  # capacity options of Router
        self.norm_topk_prob = norm_topk_prob
        self.aux_loss_coef = aux_loss_coef
        self.z_loss_coef = z_loss_coef
        self.global_balance = global_balance
        # Transient within one optimizer step: not saved (checkpoints are taken at step boundaries).
        self.register_buffer("global_counts", torch.zeros(num_experts), persistent=False)  # [E]

    def reset_parameters(self) -> None:
        init.zeros_(self.global_counts)

    def end_of_step(self) -> None:
        """Start a new global batch: forget the slot counts of the finished optimizer step."""
        self.global_counts.zero_()

    def _fraction(self, expert_idx: Tensor) -> Tensor | None:
        """f [E] over the global batch so far, or None for the local f."""
        if not (self.global_balance and self.training):
            return None
        if not self.recomputing:
            counts = expert_counts(expert_idx, self.num_experts).float()  # [E]
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(counts)
            self.global_counts += counts
        tokens = self.global_counts.sum().clamp(min=1.0) / self.top_k  # tokens of the global batch so far
        return self.global_counts / tokens  # Σ f = K, as the local f

    def forward(self, x: Tensor, seq_len: int | None = None) -> RoutingResult:
        logits = self.logits(x)  # [T, E] fp32
        probs = logits.softmax(dim=-1)  # [T, E]
        top_p, expert_idx = probs.topk(self.top_k, dim=-1)  # [T, K]
        if self.norm_topk_prob:
            top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        aux = {}
        if self.aux_loss_coef > 0:
            fraction = self._fraction(expert_idx)
            aux["load_balance"] = self.aux_loss_coef * switch_load_balance_loss(
                probs, expert_idx, self.num_experts, fraction)
        if self.z_loss_coef > 0:
            aux["z"] = self.z_loss_coef * z_loss(logits)
        return self.finish(expert_idx, top_p, logits, aux, x.dtype)
