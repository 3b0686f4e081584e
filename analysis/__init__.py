"""Diagnostics: stream dominance and expert balance (metrics, figures, TensorBoard callback, CLI).

``DiagnosticsCallback`` is imported lazily (it needs Lightning)."""

from .domains import domain_expert_counts, domain_usage, js_divergence
from .experts import expert_metrics
from .report import collect, scalars, summarize
from .streams import (amax_gain, branch_metrics, depth_product, dominant_share, effective_streams,
                      identity_distance, lss_scales, mean_pairwise_cosine, norm_shares, off_diagonal_mass,
                      stream_ablation, stream_metrics, weight_concentration)

__all__ = [
    "DiagnosticsCallback", "collect", "scalars", "summarize", "expert_metrics", "domain_expert_counts",
    "domain_usage", "js_divergence", "amax_gain", "branch_metrics", "depth_product", "dominant_share",
    "effective_streams", "identity_distance", "lss_scales", "mean_pairwise_cosine", "norm_shares",
    "off_diagonal_mass", "stream_ablation", "stream_metrics", "weight_concentration",
]


def __getattr__(name):
    if name == "DiagnosticsCallback":
        from .callback import DiagnosticsCallback

        return DiagnosticsCallback
    raise AttributeError(f"module 'hizoo.analysis' has no attribute {name!r}")
