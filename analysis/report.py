"""All diagnostics of one model on one batch: a JSON-ready report and a short text summary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .domains import domain_expert_counts, domain_usage
from .experts import expert_metrics
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
    out = model(input_ids, output_diagnostics=True, use_cache=False)
    logits = out.logits  # [B, S, V]
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())
    report: dict = {"loss": float(ce), "tokens": int(input_ids.numel()), "notes": [],
                    "config": {k: getattr(config, k, None) for k in (
                        "num_hidden_layers", "hidden_size", "ffn", "num_experts", "num_experts_per_tok",
                        "n_groups", "router", "residual", "n_streams", "stream_init")}}
    if kind["moe"]:
        report["experts"] = expert_metrics(out.routing, config.num_experts, config.n_groups)
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
        streams = stream_metrics(out.diagnostics)
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
        dist = [layer[b]["mix_identity_distance"] for layer in streams["layers"] for b in ("attn", "ffn")
                if "mix_identity_distance" in layer[b]]
        if dist:
            lines.append(f"residual mixing distance from identity ‖M − I‖_F: mean {sum(dist) / len(dist):.3f}, "
                         f"max {max(dist):.3f}")
        if "depth" in streams:
            lines.append(f"Amax gain of the mixing product over depth: {streams['depth']['amax_gain']:.3f}")
        if "ablation" in streams:
            inc = streams["ablation"]["loss_increase"]
            j = max(range(len(inc)), key=lambda k: inc[k])
            lines.append(f"zeroing stream {j} at the reduction raises the loss most: {inc[j]:+.3f} nats")
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


def scalars(report: dict) -> dict[str, float]:
    """Flatten a report into TensorBoard scalars: ``experts/…`` and ``streams/…`` tags (layers 0-based)."""
    out: dict[str, float] = {}
    experts = report.get("experts")
    if experts and experts["moe_layers"]:
        for key in ("mean_cv", "mean_max_vio", "mean_drop_rate"):
            out[f"experts/{key}"] = experts[key]
        for i, s in experts["layers"].items():
            for key in ("cv", "max_vio", "entropy_normalized", "drop_rate", "group_cv", "max_group_share",
                        "within_group_collapse"):
                if key in s:
                    out[f"experts/layer{i}/{key}"] = s[key]
    domains = report.get("domains")
    if domains:
        d = domains["all_layers"]
        for name, spec in zip(d["domains"], d["specialization"]):
            out[f"experts/domain/{name}/specialization"] = spec
    streams = report.get("streams")
    if streams:
        for i, layer in enumerate(streams["layers"]):
            for key in ("dominant_share", "effective_streams", "mean_cosine"):
                out[f"streams/layer{i}/{key}"] = layer[key]
            for b in ("attn", "ffn"):
                for key in ("read_concentration", "write_concentration", "mix_identity_distance",
                            "mix_off_diagonal_mass", "mix_logit_spread"):
                    if key in layer[b]:
                        out[f"streams/layer{i}/{b}/{key}"] = layer[b][key]
        if "depth" in streams:
            out["streams/amax_gain"] = streams["depth"]["amax_gain"]
        if "ablation" in streams:
            for j, inc in enumerate(streams["ablation"]["loss_increase"]):
                out[f"streams/ablation/stream{j}"] = inc
        if "lss_scales" in streams:
            for j, m in enumerate(streams["lss_scales"]["mean"]):
                out[f"streams/lss_scale/stream{j}"] = m
    return out
