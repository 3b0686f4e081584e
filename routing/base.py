"""The routing interface every router implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class RoutingResult:
    """What a router decides for T tokens. Statistics are derived from ``expert_idx`` by ``routing.stats``."""

    expert_idx: Tensor  # [T, K] int64  chosen experts per token
    expert_weight: Tensor  # [T, K] combine weights, dtype of the activations
    router_logits: Tensor  # [T, E] fp32  raw logits (z-loss, analysis)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # named, already scaled by their coefficients

    @property
    def aux_loss(self) -> Tensor:
        """Sum of the scaled aux losses (0 when the router has none)."""
        if not self.aux_losses:
            return self.router_logits.new_zeros(())
        return torch.stack(list(self.aux_losses.values())).sum()


class Router(nn.Module):
    """Base class: ``forward(x [T, d]) -> RoutingResult``; the gate weight is ``self.weight`` [E, d]."""

    def __init__(self, num_experts: int, hidden_size: int, top_k: int):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))

    def logits(self, x: Tensor) -> Tensor:
        """Router logits g = W_r x in fp32 (routing decisions are precision-sensitive), no bias."""
        return torch.nn.functional.linear(x.float(), self.weight.float())  # [T, E]

    def forward(self, x: Tensor) -> RoutingResult:  # pragma: no cover - interface
        raise NotImplementedError
