"""Routers: pure tensor code that maps tokens to experts. ``build_router(config)`` picks one by name."""

from .base import Router, RoutingResult
from .topk import TopKRouter


def build_router(config) -> Router:
    """The router named by ``config.router`` (``topk`` | ``group_limited`` | ``himoe``)."""
    if config.router == "topk":
        return TopKRouter(
            config.num_experts,
            config.hidden_size,
            config.num_experts_per_tok,
            norm_topk_prob=config.norm_topk_prob,
            aux_loss_coef=config.router_aux_loss_coef,
            z_loss_coef=config.router_z_loss_coef,
        )
    raise ValueError(f"router={config.router!r} is not implemented yet; available: 'topk'")


__all__ = ["Router", "RoutingResult", "TopKRouter", "build_router"]
