"""Expert-balance metrics per layer from a model's ``routing`` output (statistics from ``routing.stats``).

``ExpertMetrics`` holds one ``ExpertLayerMetrics`` per MoE layer, for a held-out forward (``expert_metrics``) or
for the training batches of an optimizer step (``models.moe.step_expert_metrics``); ``scalars`` is the one
flattening into TensorBoard tags for both (``experts/…`` held out, ``train/experts/…`` training batches)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..routing.base import RoutingResult
from ..routing.stats import ExpertLayerMetrics, routing_stats

MEAN_KEYS = ("cv", "max_vio", "drop_rate")  # averaged over the MoE layers as "mean_<key>"


@dataclass
class ExpertMetrics:
    """Per MoE layer (0-based layer index) its ExpertLayerMetrics; the means are over those layers."""

    layers: dict[int, ExpertLayerMetrics] = field(default_factory=dict)

    @property
    def moe_layers(self) -> list[int]:
        return sorted(self.layers)

    def mean(self, key: str) -> float:
        return sum(getattr(s, key) for s in self.layers.values()) / len(self.layers)

    def to_dict(self) -> dict:
        """The report's JSON form: {"moe_layers", "layers": {i: {...}}, "mean_cv", "mean_max_vio",
        "mean_drop_rate"} (no means without MoE layers)."""
        out: dict = {"moe_layers": self.moe_layers, "layers": {i: self.layers[i].to_dict() for i in self.moe_layers}}
        if self.layers:
            out.update({f"mean_{key}": self.mean(key) for key in MEAN_KEYS})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ExpertMetrics:
        """Reads ``to_dict``'s form, also after JSON (layer keys as strings)."""
        return cls({int(i): ExpertLayerMetrics.from_dict(s) for i, s in data.get("layers", {}).items()})

    def scalars(self, prefix: str = "experts") -> dict[str, float]:
        """TensorBoard scalars: ``<prefix>/mean_<key>`` and ``<prefix>/layerI/<name>`` (ExpertLayerMetrics.SCALARS)."""
        out: dict[str, float] = {}
        if not self.layers:
            return out
        for key in MEAN_KEYS:
            out[f"{prefix}/mean_{key}"] = self.mean(key)
        for i in self.moe_layers:
            for key, value in self.layers[i].scalars().items():
                out[f"{prefix}/layer{i}/{key}"] = value
        return out


def expert_metrics(routing: tuple[RoutingResult | None, ...] | list, num_experts: int,
                   n_groups: int = 1) -> ExpertMetrics:
    """Per-layer routing statistics. ``routing``: per layer a RoutingResult (MoE layer) or None (dense layer)."""
    layers: dict[int, ExpertLayerMetrics] = {}
    for i, r in enumerate(routing or ()):
        if r is None:
            continue
        layers[i] = routing_stats(r.expert_idx.detach().cpu(), num_experts, n_groups,
                                  dropped=_cpu(getattr(r, "dropped", None)))
    return ExpertMetrics(layers)


def _cpu(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().cpu()
