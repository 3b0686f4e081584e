"""MoEFeedForward: router + grouped experts (+ optional shared experts)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..kernels import GroupedExperts
from ..routing import RoutingResult, build_router
from .configuration import HizooConfig
from .mlp import SwiGLU


class MoEFeedForward(nn.Module):
    """Routed SwiGLU experts; the router is the one ``config.router`` names.

    forward(h [B, S, d]) -> (out [B, S, d], RoutingResult over the B·S tokens)
    """

    def __init__(self, config: HizooConfig):
        super().__init__()
        self.router = build_router(config)
        self.experts = GroupedExperts(
            config.num_experts, config.hidden_size, config.moe_intermediate_size, backend=config.experts_backend
        )
        self.shared_experts = None
        if config.num_shared_experts > 0:
            # DeepSeekMoE: always-active experts, run as one SwiGLU of the summed width.
            self.shared_experts = SwiGLU(config.hidden_size, config.num_shared_experts * config.moe_intermediate_size)

    def forward(self, h: Tensor) -> tuple[Tensor, RoutingResult]:
        B, S, d = h.shape
        x = h.reshape(B * S, d)  # [T, d]
        routing = self.router(x, seq_len=S)  # seq_len: sequence-wise balance loss
        out = self.experts(x, routing.expert_idx, routing.expert_weight)  # [T, d]
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.view(B, S, d), routing


def update_router_states(model: nn.Module) -> None:
    """Once per optimizer step, after the last micro-batch of the accumulation window (Lightning: hizoo's
    LightningModule calls it right after ``optimizer.step()``; a plain loop or the HF ``Trainer``: call it after
    each ``optimizer.step()``): every router applies the state updates of the step's training forwards.
    DeepSeek-V3's loss-free bias moves from the loads of the whole window; ``topk`` forgets the global-batch
    counts; Hi-MoE counts the step (λ1 warm-up).

    Routers opt in with ``end_of_step()``; those whose update needs counts summed over data-parallel ranks also
    expose ``pending_counts()`` ([n] fp32 on this rank). All layers' counts travel in ONE ``all_reduce`` of
    their concatenation, and each router gets its reduced slice as ``end_of_step(reduced)``."""
    routers = [m.router for m in model.modules() if isinstance(m, MoEFeedForward) and hasattr(m.router, "end_of_step")]
    pending = [(router, router.pending_counts()) for router in routers if hasattr(router, "pending_counts")]
    reduced: dict[int, Tensor] = {}
    if pending:
        sizes = [counts.numel() for _, counts in pending]
        flat = torch.cat([counts.detach().float().flatten() for _, counts in pending])  # [Σ n]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flat)
        for (router, counts), part in zip(pending, flat.split(sizes)):
            reduced[id(router)] = part.view_as(counts)
    for router in routers:
        if id(router) in reduced:
            router.end_of_step(reduced[id(router)])
        else:
            router.end_of_step()
