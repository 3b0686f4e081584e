"""The routing interface every router implements, and what all routers share (capacity, recompute check)."""

from __future__ import annotations

import math
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
    dropped: Tensor | None = None  # [T, K] bool  pairs over capacity (weight set to 0); None when dropless

    @property
    def aux_loss(self) -> Tensor:
        """Sum of the scaled aux losses (0 when the router has none)."""
        if not self.aux_losses:
            return self.router_logits.new_zeros(())
        return torch.stack(list(self.aux_losses.values())).sum()


def in_backward_recompute() -> bool:
    """True while the autograd engine runs this code, i.e. a gradient-checkpointed block recomputing its
    forward during backward (reentrant and non-reentrant checkpointing both recompute inside backward).
    Routers skip their state updates (EMA, load accumulation) then, so that each update happens once per
    forward and the recomputed forward sees exactly the state the original one used.
    (``_current_graph_task_id`` is -1 outside the autograd engine; torch has no public flag for this.)"""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


def apply_capacity(expert_idx: Tensor, expert_weight: Tensor, num_experts: int,
                   capacity_factor: float) -> tuple[Tensor, Tensor]:
    """Switch-style capacity: each expert takes at most C = ceil(capacity_factor · T·K / E) pairs, first come
    first served in (token, slot) order; the overflow pairs keep their expert index but get weight 0.

    expert_idx [T, K], expert_weight [T, K] -> (expert_weight [T, K] with zeros, dropped [T, K] bool)
    """
    T, K = expert_idx.shape
    capacity = math.ceil(capacity_factor * T * K / num_experts)
    flat = expert_idx.flatten()  # [T*K]
    one_hot = torch.nn.functional.one_hot(flat, num_experts)  # [T*K, E]
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # [T*K] rank of the pair within its expert
    dropped = (position >= capacity).view(T, K)  # [T, K]
    return expert_weight.masked_fill(dropped, 0.0), dropped


class Router(nn.Module):
    """Base class: ``forward(x [T, d], seq_len=None) -> RoutingResult``; the gate weight is ``self.weight`` [E, d].

    ``seq_len`` (tokens are B sequences of ``seq_len`` in order) is only needed by sequence-wise losses.
    ``capacity_factor`` None means dropless.
    """

    def __init__(self, num_experts: int, hidden_size: int, top_k: int, capacity_factor: float | None = None):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))

    def logits(self, x: Tensor) -> Tensor:
        """Router logits g = W_r x in fp32 (routing decisions are precision-sensitive), no bias."""
        return torch.nn.functional.linear(x.float(), self.weight.float())  # [T, E]

    def finish(self, expert_idx: Tensor, expert_weight: Tensor, logits: Tensor, aux: dict[str, Tensor],
               dtype: torch.dtype) -> RoutingResult:
        """Apply the capacity limit (if any) and cast the combine weights to the activations' dtype."""
        dropped = None
        if self.capacity_factor is not None:
            expert_weight, dropped = apply_capacity(expert_idx, expert_weight, self.num_experts, self.capacity_factor)
        return RoutingResult(expert_idx, expert_weight.to(dtype), logits, aux, dropped)

    def forward(self, x: Tensor, seq_len: int | None = None) -> RoutingResult:  # pragma: no cover - interface
        raise NotImplementedError
