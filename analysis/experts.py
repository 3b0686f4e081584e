"""Expert-balance metrics per layer from a model's ``routing`` output (statistics from ``routing.stats``)."""

from __future__ import annotations

from torch import Tensor

from ..routing.base import RoutingResult
from ..routing.stats import routing_stats


def expert_metrics(routing: tuple[RoutingResult | None, ...] | list, num_experts: int, n_groups: int = 1) -> dict:
    """Per-layer routing statistics. ``routing``: per layer a RoutingResult (MoE layer) or None (dense layer).

    Returns {"moe_layers": [layer indices], "layers": {layer: routing_stats(...)}, "mean_cv", "mean_max_vio",
    "mean_drop_rate"}; {"moe_layers": []} when no layer is MoE.
    """
    layers: dict[int, dict] = {}
    for i, r in enumerate(routing or ()):
        if r is None:
            continue
        layers[i] = routing_stats(r.expert_idx.detach().cpu(), num_experts, n_groups,
                                  dropped=_cpu(getattr(r, "dropped", None)))
    out: dict = {"moe_layers": sorted(layers), "layers": layers}
    if layers:
        for key in ("cv", "max_vio", "drop_rate"):
            out[f"mean_{key}"] = sum(s[key] for s in layers.values()) / len(layers)
    return out


def _cpu(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().cpu()
