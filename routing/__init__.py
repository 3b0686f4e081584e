"""Routers: pure tensor code that maps tokens to experts. ``build_router(config)`` picks one by name."""

from .base import (CAPACITY_PRIORITIES, CAPACITY_RULES, Router, RoutingResult, apply_capacity, expert_capacity,
                   recompute_aware, routers_recomputing)
from .group_limited import GroupLimitedRouter
from .himoe import HiMoERouter
from .topk import TopKRouter

ROUTER_NAMES = ("topk", "group_limited", "himoe")  # the allowed values of HizooConfig.router


def build_router(config) -> Router:
    """The router named by ``config.router`` (``topk`` | ``group_limited`` | ``himoe``)."""
    common = dict(num_experts=config.num_experts, hidden_size=config.hidden_size, top_k=config.num_experts_per_tok,
                  capacity_factor=config.capacity_factor, eval_capacity_factor=config.eval_capacity_factor,
                  capacity_rule=config.capacity_rule, min_capacity=config.min_capacity,
                  capacity_priority=config.capacity_priority)
    if config.router == "topk":
        return TopKRouter(
            **common,
            norm_topk_prob=config.norm_topk_prob,
            aux_loss_coef=config.router_aux_loss_coef,
            z_loss_coef=config.router_z_loss_coef,
            global_balance=config.router_global_balance,
        )
    if config.router == "group_limited":
        return GroupLimitedRouter(
            **common,
            n_groups=config.n_groups,
            topk_groups=config.topk_groups,
            routed_scaling_factor=config.routed_scaling_factor,
            bias_update_rate=config.router_bias_update_rate,
            seq_aux_loss_coef=config.seq_aux_loss_coef,
        )
    if config.router == "himoe":
        return HiMoERouter(
            **common,
            n_groups=config.n_groups,
            topk_groups=config.topk_groups,
            tau=config.himoe_tau,
            ema_beta=config.himoe_ema_beta,
            temperature=config.himoe_temperature,
            lambda_intra=config.himoe_lambda_intra,
            lambda_inter=config.himoe_lambda_inter,
            reg_source=config.himoe_reg_source,
            reg_form=config.himoe_reg_form,
            group_mass=config.himoe_group_mass,
            intra_warmup_steps=config.himoe_intra_warmup_steps,
            aux_loss_coef=config.router_aux_loss_coef,
            z_loss_coef=config.router_z_loss_coef,
        )
    raise ValueError(f"router={config.router!r} is not allowed; choose one of {ROUTER_NAMES}")


__all__ = ["CAPACITY_PRIORITIES", "CAPACITY_RULES", "GroupLimitedRouter", "HiMoERouter", "ROUTER_NAMES", "Router",
           "RoutingResult", "TopKRouter", "apply_capacity", "build_router", "expert_capacity", "recompute_aware",
           "routers_recomputing"]
