"""MoEFeedForward: router + grouped experts (+ optional shared experts)."""

from __future__ import annotations

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
    """Once per optimizer step (after ``optimizer.step()``): let every router apply state updates accumulated
    over the step's micro-batches. Routers opt in with an ``end_of_step()`` method: DeepSeek-V3's loss-free
    bias update, the global-batch load-balance counts of ``topk``, Hi-MoE's step counter (λ1 warm-up)."""
    for module in model.modules():
        if isinstance(module, MoEFeedForward) and hasattr(module.router, "end_of_step"):
            module.router.end_of_step()
