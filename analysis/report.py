"""All diagnostics of one model on one batch: a JSON-ready report and a short text summary."""

from __future__ import annotations

import torch
from torch import Tensor

from .domains import domain_expert_counts, domain_usage
from .experts import ExpertMetrics, expert_metrics
from .mixing import AXIS_GAIN
from .streams import lss_scales, stream_ablation, stream_metrics


def model_kind(config) -> dict:
    """What the model has to measure: MoE layers and/or several residual streams."""
    return {"moe": getattr(config, "ffn", "dense") == "moe",
            "streams": getattr(config, "residual", "none") != "none" and getattr(config, "n_streams", 1) > 1}


@torch.no_grad()
def collect(model, input_ids: Tensor, domain_ids: Tensor | None = None, domain_names: list[str] | None = None,
            ablation: bool = True) -> dict:
    """Run ``model`` (a HizooForCausalLM) on input_ids [B, S] and compute every metric.

    domain_ids [B, S] (optional): domain of each token for per-domain routing. Returns a dict with "loss"
    (CE), "notes", and "experts", "domains", "streams" sections for what the model has.
    """
    config = model.config
    kind = model_kind(config)
    out = model(input_ids, labels=input_ids, output_diagnostics=True, use_cache=False)  # ce_loss: the model's CE
    report: dict = {"loss": float(out.ce_loss), "tokens": int(input_ids.numel()), "notes": [],
                    "config": {k: getattr(config, k, None) for k in (
                        "num_hidden_layers", "hidden_size", "ffn", "num_experts", "num_experts_per_tok",
                        "n_groups", "router", "residual", "n_streams", "stream_init", "stream_reduce",
                        "hc_dynamic", "mhc_sinkhorn_iters")}}
    if kind["moe"]:
        report["experts"] = expert_metrics(out.routing, config.num_experts, config.n_groups).to_dict()
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
            report["domains"] = {"all_layers": domain_usage(total, domain_names), "layers": per_layer}
    else:
        report["notes"].append("model has no MoE layers (ffn='dense'): expert metrics skipped")
    if kind["streams"]:
        streams = stream_metrics(out.diagnostics, config.residual)
        if ablation:
            streams["ablation"] = stream_ablation(model, out.diagnostics[-1]["streams"], input_ids)
        scales = lss_scales(model)
        if scales is not None:
            streams["lss_scales"] = scales
        report["streams"] = streams
    else:
        report["notes"].append("model has a single residual stream (residual='none' or n_streams=1): "
                               "stream metrics skipped")
    return report


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


def _connections(streams: dict):
    """(layer, branch, metrics) of every connection with a mixing."""
    return [(i, b, layer[b]) for i, layer in enumerate(streams["layers"]) for b in ("attn", "ffn") if "mix" in layer[b]]


def _mixing_lines(streams: dict) -> list[str]:
    """Sentences on the residual mixing: distance from the identity, per-token sums, logit spreads, Amax gains."""
    conns = _connections(streams)
    if not conns:
        return []
    lines = []
    dist = [m["mix_identity_distance_per_token"] for _, _, m in conns]
    mean_dist = [m["mix_identity_distance"] for _, _, m in conns]
    lines.append(f"residual mixing distance from identity ‖M − I‖_F per token: mean {sum(dist) / len(dist):.3f}, "
                 f"max over connections {max(dist):.3f} (of the token-mean M: mean "
                 f"{sum(mean_dist) / len(mean_dist):.3f})")
    mixing = streams.get("mixing", {})
    for axis, what in (("column", "Σ_i M[i, j], column"), ("row", "Σ_j M[i, j], row")):
        d = mixing.get(f"{axis}_sums_per_token")
        if d:
            lines.append(f"per-token {what} sums of the mixings: {min(d['min']):.3f}–{max(d['max']):.3f} "
                         f"(mean |sum − 1| {d['mean_abs_deviation']:.2e})")
    spread = mixing.get("logit_spread")
    if spread:
        above = (f", {spread['fraction_above_30']:.1%} above 30 (slow Sinkhorn)" if "fraction_above_30" in spread
                 else "")
        lines.append(f"residual-mixing logit spread (max − min per token): median {spread['median']:.1f}, "
                     f"max {spread['max']:.1f}{above}")
    depth = streams.get("depth", {})
    gains = [f"{name} {depth[f'amax_{name}']:.3f} (worst token {depth[f'amax_{name}_max']:.3f})"
             for name in ("forward", "backward") if f"amax_{name}" in depth]
    if gains:
        lines.append(f"Amax gain of the per-token mixing product over depth (token mean): {'; '.join(gains)}")
    exact = streams.get("exact_by_construction", {})
    for axis in ("column", "row"):
        if f"{axis}_sums" in exact:
            lines.append(f"not reported, 1 by construction: {axis} sums and amax_{AXIS_GAIN[axis]} "
                         f"({exact[f'{axis}_sums']})")
    return lines


def summarize(report: dict) -> list[str]:
    """A few plain sentences on the report (layer numbers are 0-based)."""
    lines = [f"CE loss {report['loss']:.3f} on {report['tokens']} tokens"]
    lines += report.get("notes", [])
    streams = report.get("streams")
    if streams:
        n = streams["n_streams"]
        by_stream: dict[int, list[int]] = {}
        for i, layer in enumerate(streams["layers"]):
            if layer["dominant_share"] > 1.5 / n:  # clearly above the even share 1/n
                by_stream.setdefault(layer["dominant_stream"], []).append(i)
        for s, layers in sorted(by_stream.items()):
            share = sum(streams["layers"][i]["dominant_share"] for i in layers) / len(layers)
            lines.append(f"stream {s} carries {share:.0%} of the residual norm in layers {_ranges(layers)}")
        if not by_stream:
            lines.append(f"no dominant stream: every layer's largest norm share is below {1.5 / n:.0%}")
        eff = [layer["effective_streams"] for layer in streams["layers"]]
        lines.append(f"effective streams {min(eff):.2f}–{max(eff):.2f} of {n}; mean pairwise cosine in the last "
                     f"layer {streams['layers'][-1]['mean_cosine']:.2f}")
        lines += _mixing_lines(streams)
        if "ablation" in streams:
            inc = streams["ablation"]["loss_increase"]
            j = max(range(len(inc)), key=lambda k: inc[k])
            lines.append(f"zeroing stream {j}'s contribution to the output ({streams['ablation']['stream_reduce']}) "
                         f"raises the loss most: {inc[j]:+.3f} nats")
    experts = report.get("experts")
    if experts and experts["moe_layers"]:
        layers = experts["layers"]
        worst = max(layers, key=lambda i: layers[i]["max_vio"])
        lines.append(f"expert balance: mean CV {experts['mean_cv']:.3f}, mean MaxVio {experts['mean_max_vio']:.3f} "
                     f"(worst layer {worst}: {layers[worst]['max_vio']:.3f})")
        if experts["mean_drop_rate"] > 0:
            lines.append(f"capacity drops: {experts['mean_drop_rate']:.1%} of routed pairs")
        coll = [s["within_group_collapse"] for s in layers.values() if "within_group_collapse" in s]
        if coll:
            mean = sum(coll) / len(coll)
            lines.append(f"within-group collapse (busiest expert's share of its group): mean {mean:.2f}")
    domains = report.get("domains")
    if domains and domains["all_layers"]["domains"]:
        d = domains["all_layers"]
        k = max(range(len(d["domains"])), key=lambda i: d["specialization"][i])
        lines.append(f"most specialized domain: {d['domains'][k]} (JS divergence {d['specialization'][k]:.3f} nats "
                     f"from the average expert usage)")
    return lines


BRANCH_SCALARS = ("read_concentration", "read_concentration_per_token", "write_concentration",
                  "write_concentration_per_token", "mix_identity_distance", "mix_identity_distance_per_token",
                  "mix_off_diagonal_mass", "mix_amax_forward", "mix_amax_forward_max", "mix_amax_backward",
                  "mix_amax_backward_max", "mix_logit_spread", "mix_logit_spread_max", "mix_logit_spread_above_30")


def scalars(report: dict) -> dict[str, float]:
    """Flatten a report into TensorBoard scalars: ``experts/…`` and ``streams/…`` tags (layers 0-based)."""
    out: dict[str, float] = {}
    experts = report.get("experts")
    if experts:
        out.update(ExpertMetrics.from_dict(experts).scalars("experts"))
    domains = report.get("domains")
    if domains:
        d = domains["all_layers"]
        for name, spec in zip(d["domains"], d["specialization"]):
            out[f"experts/domain/{name}/specialization"] = spec
    streams = report.get("streams")
    if streams:
        for i, layer in enumerate(streams["layers"]):
            for key in ("dominant_share", "dominant_share_per_token", "effective_streams", "mean_cosine"):
                if key in layer:
                    out[f"streams/layer{i}/{key}"] = layer[key]
            for b in ("attn", "ffn"):
                for key, value in layer[b].items():
                    if key in BRANCH_SCALARS:
                        out[f"streams/layer{i}/{b}/{key}"] = value
                    elif key.endswith("_sums_per_token"):
                        out[f"streams/layer{i}/{b}/{key[:-len('_per_token')]}_max_abs_deviation"] = \
                            value["max_abs_deviation"]
        mixing = streams.get("mixing", {})
        for axis in ("column", "row"):
            if f"{axis}_sums_per_token" in mixing:
                d = mixing[f"{axis}_sums_per_token"]
                out[f"streams/mix_{axis}_sums/max_abs_deviation"] = d["max_abs_deviation"]
                out[f"streams/mix_{axis}_sums/mean_abs_deviation"] = d["mean_abs_deviation"]
        if "logit_spread" in mixing:
            for key in ("mean", "median", "q95", "max", "fraction_above_30"):
                if key in mixing["logit_spread"]:
                    out[f"streams/logit_spread/{key}"] = mixing["logit_spread"][key]
        depth = streams.get("depth", {})
        for name in ("forward", "backward"):
            if f"amax_{name}" in depth:
                out[f"streams/amax_{name}"] = depth[f"amax_{name}"]
                out[f"streams/amax_{name}_max"] = depth[f"amax_{name}_max"]
        for axis in ("column", "row"):
            if f"{axis}_sums_per_token" in depth:
                d = depth[f"{axis}_sums_per_token"]
                out[f"streams/product_{axis}_sums/max_abs_deviation"] = d["max_abs_deviation"]
        if "ablation" in streams:
            for j, inc in enumerate(streams["ablation"]["loss_increase"]):
                out[f"streams/ablation/stream{j}"] = inc
        if "lss_scales" in streams:
            for j, m in enumerate(streams["lss_scales"]["mean"]):
                out[f"streams/lss_scale/stream{j}"] = m
    return out
