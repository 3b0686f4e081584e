"""All diagnostics of one model on one batch: a ``DiagnosticsReport`` (JSON-ready through ``to_dict``), its
TensorBoard scalars, the study's per-run numbers and a short text summary.

The report's sections are the dataclasses defined next to their metrics: ``ExpertMetrics`` of
``ExpertLayerMetrics`` (analysis/experts.py, routing/stats.py), ``StreamMetrics`` of ``StreamLayerMetrics``,
``BranchMetrics``, ``MixingMetrics``, ``DepthMetrics`` (analysis/streams.py); the per-domain routing stays the
dict of ``domain_usage``. ``DiagnosticsReport.scalars`` is the one flattening into TensorBoard tags (the callback
logs it), ``study_metrics`` the one into the study's table columns, ``to_dict``/``from_dict`` the one JSON form
(report.json of ``python -m hizoo.analysis``, the "report" of the study's results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean
from typing import ClassVar

import torch
from torch import Tensor

from .domains import domain_expert_counts, domain_usage
from .experts import ExpertMetrics, expert_metrics
from .mixing import AXIS_GAIN
from .records import Record
from .streams import StreamMetrics, lss_scales, stream_ablation, stream_metrics

CONFIG_FIELDS = ("num_hidden_layers", "hidden_size", "ffn", "num_experts", "num_experts_per_tok", "n_groups", "router",
                 "residual", "n_streams", "stream_init", "stream_reduce", "hc_dynamic", "mhc_sinkhorn_iters")


@dataclass(kw_only=True)
class DiagnosticsReport(Record):
    """Every metric of one diagnostics forward. ``experts``/``domains``/``streams``: None when the model has no MoE
    layer / no domain ids were given / a single residual stream (``notes`` says why). The CLI adds ``data``,
    ``model_path`` and ``figures``."""

    loss: float  # the model's next-token CE (``ce_loss``), no aux losses
    tokens: int
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # CONFIG_FIELDS of the model's config
    experts: ExpertMetrics | None = None
    domains: dict | None = None  # {"all_layers": domain_usage(...), "layers": {layer: domain_usage(...)}}
    streams: StreamMetrics | None = None
    data: str | None = None
    model_path: str | None = None
    figures: list[str] | None = None

    NESTED: ClassVar[dict[str, type]] = {"experts": ExpertMetrics, "streams": StreamMetrics}

    @classmethod
    def from_dict(cls, data: dict) -> DiagnosticsReport:
        """Reads ``to_dict``'s form, also after JSON (layer keys of experts and domains as strings)."""
        report = super().from_dict(data)
        if report.domains is not None and "layers" in report.domains:
            report.domains = {**report.domains, "layers": {int(k): v for k, v in report.domains["layers"].items()}}
        return report

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars: ``experts/…`` and ``streams/…`` tags (layers 0-based)."""
        out: dict[str, float] = {}
        if self.experts is not None:
            out.update(self.experts.scalars("experts"))
        if self.domains is not None:
            d = self.domains["all_layers"]
            for name, spec in zip(d["domains"], d["specialization"]):
                out[f"experts/domain/{name}/specialization"] = spec
        if self.streams is not None:
            out.update(self.streams.scalars())
        return out

    def study_metrics(self) -> dict:
        """The study's per-run numbers (results.json "metrics", results.md columns; layer means, absent sections
        give no keys). Experts: "cv", "max_vio", with groups "group_cv", "within_group_collapse"; domains:
        "specialization" (mean JS divergence). Streams: "dominant_share" (and "…_max" over layers),
        "effective_streams", "stream_cosine", "mix_identity_distance" (‖M̄ − I‖_F of the token-mean mixing) and
        "mix_identity_distance_per_token" (token mean of ‖M_t − I‖_F), both averaged over connections;
        "column_sum_deviation" / "row_sum_deviation" (mean |sum − 1| of the per-token sums over all connections);
        "logit_spread_above_30" (mHC); "amax_forward" / "amax_backward" (token mean of the per-token Amax gain of
        the mixing product over depth); "ablation_max"/"ablation_min"; and "exact_by_construction": the keys of
        those that are fixed for the kind (left out, not reported as constants)."""
        out: dict = {}
        if self.experts is not None and self.experts.layers:
            layers = list(self.experts.layers.values())
            out["cv"] = self.experts.mean("cv")
            out["max_vio"] = self.experts.mean("max_vio")
            if layers[0].group_cv is not None:
                out["group_cv"] = fmean(s.group_cv for s in layers)
                out["within_group_collapse"] = fmean(s.within_group_collapse for s in layers)
        if self.domains is not None and self.domains["all_layers"]["specialization"]:
            out["specialization"] = fmean(self.domains["all_layers"]["specialization"])
        if self.streams is not None:
            out.update(self.streams.study_metrics())
        return out


def as_report(report: DiagnosticsReport | dict) -> DiagnosticsReport:
    """A DiagnosticsReport, or its JSON form (``to_dict``, report.json, a study result's "report") read back."""
    return report if isinstance(report, DiagnosticsReport) else DiagnosticsReport.from_dict(report)


def model_kind(config) -> dict:
    """What the model has to measure: MoE layers and/or several residual streams."""
    return {"moe": getattr(config, "ffn", "dense") == "moe",
            "streams": getattr(config, "residual", "none") != "none" and getattr(config, "n_streams", 1) > 1}


@torch.no_grad()
def diagnose(model, input_ids: Tensor, domain_ids: Tensor | None = None, domain_names: list[str] | None = None,
             ablation: bool = True) -> DiagnosticsReport:
    """Run ``model`` (a HizooForCausalLM) on input_ids [B, S] and compute every metric.

    domain_ids [B, S] (optional): domain of each token for per-domain routing."""
    config = model.config
    kind = model_kind(config)
    out = model(input_ids, labels=input_ids, output_diagnostics=True, use_cache=False)  # ce_loss: the model's CE
    report = DiagnosticsReport(loss=float(out.ce_loss), tokens=int(input_ids.numel()),
                               config={k: getattr(config, k, None) for k in CONFIG_FIELDS})
    if kind["moe"]:
        report.experts = expert_metrics(out.routing, config.num_experts, config.n_groups)
        if domain_ids is not None:
            n_dom = len(domain_names) if domain_names else int(domain_ids.max()) + 1
            per_layer = {}
            total = None
            for i, r in enumerate(out.routing):
                if r is None:
                    continue
                counts = domain_expert_counts(r.expert_idx.cpu(), domain_ids.flatten().cpu(), config.num_experts,
                                              n_dom)  # [D, E]
                per_layer[i] = domain_usage(counts, domain_names)
                total = counts if total is None else total + counts
            report.domains = {"all_layers": domain_usage(total, domain_names), "layers": per_layer}
    else:
        report.notes.append("model has no MoE layers (ffn='dense'): expert metrics skipped")
    if kind["streams"]:
        streams = StreamMetrics.from_dict(stream_metrics(out.diagnostics, config.residual))
        if ablation:
            streams.ablation = stream_ablation(model, out.diagnostics[-1]["streams"], input_ids)
        streams.lss_scales = lss_scales(model)
        report.streams = streams
    else:
        report.notes.append("model has a single residual stream (residual='none' or n_streams=1): "
                            "stream metrics skipped")
    return report


def collect(model, input_ids: Tensor, domain_ids: Tensor | None = None, domain_names: list[str] | None = None,
            ablation: bool = True) -> dict:
    """``diagnose(...).to_dict()``: the report's JSON form (for code that stores or reads the plain dict)."""
    return diagnose(model, input_ids, domain_ids, domain_names, ablation).to_dict()


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0–2, 5'."""
    parts, start = [], None
    for i, x in enumerate(layers):
        if start is None:
            start = x
        if i + 1 == len(layers) or layers[i + 1] != x + 1:
            parts.append(f"{start}" if start == x else f"{start}–{x}")
            start = None
    return ", ".join(parts)


def _mixing_lines(streams: StreamMetrics) -> list[str]:
    """Sentences on the residual mixing: distance from the identity, per-token sums, logit spreads, Amax gains."""
    conns = [m for _, _, m in streams.connections()]
    if not conns:
        return []
    lines = []
    dist = [m.mix_identity_distance_per_token for m in conns]
    mean_dist = [m.mix_identity_distance for m in conns]
    lines.append(f"residual mixing distance from identity ‖M − I‖_F per token: mean {sum(dist) / len(dist):.3f}, "
                 f"max over connections {max(dist):.3f} (of the token-mean M: mean "
                 f"{sum(mean_dist) / len(mean_dist):.3f})")
    mixing = streams.mixing
    for axis, what in (("column", "Σ_i M[i, j], column"), ("row", "Σ_j M[i, j], row")):
        d = getattr(mixing, f"{axis}_sums_per_token") if mixing is not None else None
        if d:
            lines.append(f"per-token {what} sums of the mixings: {min(d['min']):.3f}–{max(d['max']):.3f} "
                         f"(mean |sum − 1| {d['mean_abs_deviation']:.2e})")
    spread = mixing.logit_spread if mixing is not None else None
    if spread:
        above = (f", {spread['fraction_above_30']:.1%} above 30 (slow Sinkhorn)" if "fraction_above_30" in spread
                 else "")
        lines.append(f"residual-mixing logit spread (max − min per token): median {spread['median']:.1f}, "
                     f"max {spread['max']:.1f}{above}")
    depth = streams.depth
    gains = [f"{name} {getattr(depth, f'amax_{name}'):.3f} (worst token {getattr(depth, f'amax_{name}_max'):.3f})"
             for name in ("forward", "backward") if depth is not None and getattr(depth, f"amax_{name}") is not None]
    if gains:
        lines.append(f"Amax gain of the per-token mixing product over depth (token mean): {'; '.join(gains)}")
    exact = streams.exact_by_construction or {}
    for axis in ("column", "row"):
        if f"{axis}_sums" in exact:
            lines.append(f"not reported, 1 by construction: {axis} sums and amax_{AXIS_GAIN[axis]} "
                         f"({exact[f'{axis}_sums']})")
    return lines


def summarize(report: DiagnosticsReport | dict) -> list[str]:
    """A few plain sentences on the report (or its JSON form; layer numbers are 0-based)."""
    report = as_report(report)
    lines = [f"CE loss {report.loss:.3f} on {report.tokens} tokens"]
    lines += report.notes
    streams = report.streams
    if streams:
        n = streams.n_streams
        by_stream: dict[int, list[int]] = {}
        for i, layer in enumerate(streams.layers):
            if layer.dominant_share > 1.5 / n:  # clearly above the even share 1/n
                by_stream.setdefault(layer.dominant_stream, []).append(i)
        for s, layers in sorted(by_stream.items()):
            share = sum(streams.layers[i].dominant_share for i in layers) / len(layers)
            lines.append(f"stream {s} carries {share:.0%} of the residual norm in layers {_ranges(layers)}")
        if not by_stream:
            lines.append(f"no dominant stream: every layer's largest norm share is below {1.5 / n:.0%}")
        eff = [layer.effective_streams for layer in streams.layers]
        lines.append(f"effective streams {min(eff):.2f}–{max(eff):.2f} of {n}; mean pairwise cosine in the last "
                     f"layer {streams.layers[-1].mean_cosine:.2f}")
        lines += _mixing_lines(streams)
        if streams.ablation is not None:
            inc = streams.ablation["loss_increase"]
            j = max(range(len(inc)), key=lambda k: inc[k])
            lines.append(f"zeroing stream {j}'s contribution to the output ({streams.ablation['stream_reduce']}) "
                         f"raises the loss most: {inc[j]:+.3f} nats")
    experts = report.experts
    if experts and experts.layers:
        layers = experts.layers
        worst = max(layers, key=lambda i: layers[i].max_vio)
        lines.append(f"expert balance: mean CV {experts.mean('cv'):.3f}, mean MaxVio {experts.mean('max_vio'):.3f} "
                     f"(worst layer {worst}: {layers[worst].max_vio:.3f})")
        if experts.mean("drop_rate") > 0:
            lines.append(f"capacity drops: {experts.mean('drop_rate'):.1%} of routed pairs")
        coll = [s.within_group_collapse for s in layers.values() if s.within_group_collapse is not None]
        if coll:
            mean = sum(coll) / len(coll)
            lines.append(f"within-group collapse (busiest expert's share of its group): mean {mean:.2f}")
    domains = report.domains
    if domains and domains["all_layers"]["domains"]:
        d = domains["all_layers"]
        k = max(range(len(d["domains"])), key=lambda i: d["specialization"][i])
        lines.append(f"most specialized domain: {d['domains'][k]} (JS divergence {d['specialization'][k]:.3f} nats "
                     f"from the average expert usage)")
    return lines


def scalars(report: DiagnosticsReport | dict) -> dict[str, float]:
    """``DiagnosticsReport.scalars`` of a report or of its JSON form."""
    return as_report(report).scalars()
