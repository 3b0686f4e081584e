"""MoEFeedForward: router + grouped experts (+ optional shared experts)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..kernels import GroupedExperts
from ..routing import RoutingResult, build_router
from ..routing.stats import ExpertLayerMetrics
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
    expose ``pending_counts()`` ([n] fp32 on this rank). Every router's training-batch metric counts
    (``Router.metric_counts``, [E + 1]) travel too: all layers' counts go in ONE ``all_reduce`` of their
    concatenation (fp64: exact to 2^53 pairs), each router with ``end_of_step`` gets its reduced slice as
    ``end_of_step(reduced)`` and every router its metric sums as ``end_of_step_metrics`` (read them with
    ``step_expert_metrics``)."""
    routers = [m.router for m in model.modules() if isinstance(m, MoEFeedForward)]
    pending = [(router, router.pending_counts()) for router in routers
               if hasattr(router, "end_of_step") and hasattr(router, "pending_counts")]
    parts = [counts for _, counts in pending] + [router.metric_counts() for router in routers]  # each [n]
    if not parts:
        return
    device = parts[0].device
    flat = torch.cat([p.detach().to(device, torch.float64).flatten() for p in parts])  # [Σ n]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flat)
    reduced = flat.split([p.numel() for p in parts])
    updated = {id(router): part.view_as(counts).to(counts.dtype) for (router, counts), part in zip(pending, reduced)}
    for router in routers:
        if not hasattr(router, "end_of_step"):
            continue
        if id(router) in updated:
            router.end_of_step(updated[id(router)])
        else:
            router.end_of_step()
    for router, part in zip(routers, reduced[len(pending):]):
        router.end_of_step_metrics(part)


def step_expert_metrics(model: nn.Module) -> dict[int, ExpertLayerMetrics]:
    """{layer index: ExpertLayerMetrics} of the last optimizer step's training batches (every token of every
    micro-batch on every rank; ``update_router_states`` reduced the counts), with the config's ``n_groups`` as
    the held-out diagnostics use it. Empty before the first step."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise AttributeError("step_expert_metrics needs a HizooForCausalLM or HizooModel (a .layers list)")
    n_groups = getattr(getattr(model, "config", None), "n_groups", 1) or 1
    out: dict[int, ExpertLayerMetrics] = {}
    for i, layer in enumerate(layers):
        ffn = getattr(layer, "ffn", None)
        if isinstance(ffn, MoEFeedForward):
            metrics = ffn.router.compute_metrics(n_groups)
            if metrics is not None:
                out[i] = metrics
    return out
