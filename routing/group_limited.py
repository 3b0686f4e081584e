"""DeepSeek-V3 routing: sigmoid affinities, group-limited selection, auxiliary-loss-free bias balancing."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import initialization as init

from .base import Router, RoutingResult
from .losses import sequence_balance_loss
from .stats import expert_counts


class GroupLimitedRouter(Router):
    """DeepSeek-V3 (arXiv 2412.19437, Sec. 2.1.2) with loss-free balancing (Wang et al., arXiv 2408.15664).

    - s = sigmoid(g)                                            (Eq. 15)
    - selection uses s + b, b the buffer ``expert_bias`` [E] (no gradient)        (Eq. 16)
      groups: E experts in ``n_groups`` contiguous groups; a group's score is the sum of its two largest
      s + b; keep the ``topk_groups`` best groups, then take the top-K experts of s + b inside them.
    - combine weights: the unbiased s of the chosen, normalized over the K, × ``routed_scaling_factor`` (Eq. 13).
    - b moves outside autograd once per optimizer step: ``end_of_step()`` applies
      b_i += γ · sign(mean_load − load_i) (loss-free balancing, Alg. 1), loads counted over the step's
      training forwards, every micro-batch of an accumulation window (summed over data-parallel ranks so every
      rank keeps the same b).
    - optional sequence-wise balance loss α · Σ_i f_i P_i per sequence (Eqs. 17-20), as ``seq_balance``;
      it needs ``seq_len`` in ``forward``.
    """

    def __init__(self, num_experts: int, hidden_size: int, top_k: int, n_groups: int = 1, topk_groups: int = 1,
                 routed_scaling_factor: float = 1.0, bias_update_rate: float = 1e-3, seq_aux_loss_coef: float = 0.0,
                 **capacity):
        super().__init__(num_experts, hidden_size, top_k, **capacity)  # capacity options of Router
        self.n_groups = n_groups
        self.topk_groups = topk_groups
        self.routed_scaling_factor = routed_scaling_factor
        self.bias_update_rate = bias_update_rate
        self.seq_aux_loss_coef = seq_aux_loss_coef
        self.register_buffer("expert_bias", torch.zeros(num_experts))  # [E] b, saved with the model
        self.register_buffer("step_load", torch.zeros(num_experts), persistent=False)  # [E] loads of this step

    def reset_parameters(self) -> None:
        init.zeros_(self.expert_bias)
        init.zeros_(self.step_load)

    def pending_counts(self) -> Tensor:
        """This rank's expert loads of the current optimizer step [E], to be summed over data-parallel ranks."""
        return self.step_load

    @torch.no_grad()
    def end_of_step(self, load: Tensor | None = None) -> None:
        """Loss-free balancing update (arXiv 2408.15664, Alg. 1): b_i += γ · sign(mean_load − load_i), with the
        loads of every training forward of the optimizer step (all micro-batches of the accumulation window).
        ``load``: those loads already summed over data-parallel ranks (``update_router_states`` reduces every
        layer's at once); None: this router sums its own ``step_load`` over the ranks."""
        if load is None:
            load = self.step_load.clone()  # [E]
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(load)
        if load.sum() > 0:
            self.expert_bias += self.bias_update_rate * torch.sign(load.mean() - load)
        self.step_load.zero_()

    def select(self, scores: Tensor) -> Tensor:
        """Group-limited top-K of scores [T, E] (already biased) -> expert_idx [T, K]."""
        T, E = scores.shape
        if self.topk_groups < self.n_groups:
            grouped = scores.view(T, self.n_groups, E // self.n_groups)  # [T, G, E/G]
            group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [T, G]
            keep = group_score.topk(self.topk_groups, dim=-1).indices  # [T, topk_groups]
            group_mask = torch.zeros(T, self.n_groups, dtype=torch.bool, device=scores.device).scatter_(1, keep, True)
            scores = scores.masked_fill(~group_mask.repeat_interleave(E // self.n_groups, dim=1), float("-inf"))
        return scores.topk(self.top_k, dim=-1).indices  # [T, K]

    def forward(self, x: Tensor, seq_len: int | None = None) -> RoutingResult:
        logits = self.logits(x)  # [T, E] fp32
        scores = logits.sigmoid()  # [T, E]  Eq. 15
        expert_idx = self.select(scores.detach() + self.expert_bias)  # [T, K]  Eq. 16 (b only selects)
        weight = scores.gather(1, expert_idx)  # [T, K]
        weight = weight / weight.sum(dim=-1, keepdim=True) * self.routed_scaling_factor  # Eq. 13
        if self.training and not self.recomputing:
            self.step_load += expert_counts(expert_idx, self.num_experts).float()
        aux = {}
        if self.seq_aux_loss_coef > 0:
            if seq_len is None:
                raise ValueError("seq_aux_loss_coef > 0 needs the sequence length: call forward(x, seq_len=S)")
            aux["seq_balance"] = self.seq_aux_loss_coef * sequence_balance_loss(
                scores, expert_idx, self.num_experts, seq_len)
        return self.finish(expert_idx, weight, logits, aux, x.dtype)
