"""Diagnostics: stream dominance and expert balance (metrics, figures, TensorBoard callback, CLI).

``DiagnosticsCallback`` is imported lazily (it needs Lightning)."""

from .domains import domain_expert_counts, domain_usage, js_divergence
from .experts import ExpertMetrics, expert_metrics
from .mixing import (amax_backward, amax_forward, column_sums, depth_product, exact_axes, logit_spreads, row_sums,
                     sinkhorn_exact_axis, suffix_products)
from .report import DiagnosticsReport, collect, diagnose, scalars, summarize
from .streams import (BranchMetrics, DepthMetrics, MixingMetrics, StreamLayerMetrics, StreamMetrics,
                      branch_metrics, dominant_share, dominant_share_per_token, effective_streams,
                      identity_distance, lss_scales, mean_pairwise_cosine, norm_shares, off_diagonal_mass,
                      reduce_without, stream_ablation, stream_metrics, weight_concentration)

__all__ = [
    "DiagnosticsCallback", "DiagnosticsReport", "ExpertMetrics", "StreamMetrics", "StreamLayerMetrics",
    "BranchMetrics", "MixingMetrics", "DepthMetrics", "diagnose", "collect", "scalars", "summarize", "expert_metrics",
    "domain_expert_counts",
    "domain_usage", "js_divergence", "amax_backward", "amax_forward", "branch_metrics", "column_sums",
    "depth_product", "dominant_share", "dominant_share_per_token", "effective_streams", "exact_axes",
    "identity_distance", "logit_spreads", "lss_scales", "mean_pairwise_cosine", "norm_shares", "off_diagonal_mass",
    "reduce_without", "row_sums", "sinkhorn_exact_axis", "stream_ablation", "stream_metrics", "suffix_products",
    "weight_concentration",
]


def __getattr__(name):
    if name == "DiagnosticsCallback":
        from .callback import DiagnosticsCallback

        return DiagnosticsCallback
    raise AttributeError(f"module 'hizoo.analysis' has no attribute {name!r}")
