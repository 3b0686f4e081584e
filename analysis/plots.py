"""Figures of a diagnostics report (matplotlib, Agg backend). Each function takes a report section and returns a
Figure; ``figures(report)`` returns all that apply, by name (the same names are TensorBoard tags and PNG files)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def expert_load_heatmap(experts: dict) -> Figure:
    """Layer × expert load (fraction of routed pairs; 1/E is even)."""
    layers = experts["moe_layers"]
    loads = np.array([experts["layers"][i]["load"] for i in layers])  # [L_moe, E]
    fig, ax = plt.subplots(figsize=(max(4, 0.25 * loads.shape[1] + 2), max(2.5, 0.3 * len(layers) + 1.5)))
    im = ax.imshow(loads, aspect="auto", cmap="viridis")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    ax.set_title(f"expert load (even = {1 / loads.shape[1]:.3f})")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def group_load_bars(experts: dict) -> Figure:
    """Per MoE layer, the load of each expert group as grouped bars."""
    layers = experts["moe_layers"]
    gl = np.array([experts["layers"][i]["group_load"] for i in layers])  # [L_moe, G]
    G = gl.shape[1]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(layers) * G / 2 + 2), 3))
    width = 0.8 / G
    x = np.arange(len(layers))
    for g in range(G):
        ax.bar(x + g * width - 0.4 + width / 2, gl[:, g], width, label=f"group {g}")
    ax.axhline(1 / G, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [str(i) for i in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("group load")
    ax.set_ylim(0, max(1.25 * gl.max(), 1.5 / G))
    ax.legend(fontsize="x-small", ncol=min(G, 4), loc="upper center")
    fig.tight_layout()
    return fig


def stream_norm_shares(streams: dict) -> Figure:
    """Per layer, each stream's share of the residual norm as stacked bars (1/n each when even)."""
    shares = np.array([layer["norm_share"] for layer in streams["layers"]])  # [L, n]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * shares.shape[0] + 2), 3))
    bottom = np.zeros(shares.shape[0])
    for j in range(shares.shape[1]):
        ax.bar(np.arange(shares.shape[0]), shares[:, j], bottom=bottom, label=f"stream {j}")
        bottom += shares[:, j]
    ax.set_xticks(range(shares.shape[0]))
    ax.set_xlabel("layer")
    ax.set_ylabel("norm share")
    ax.set_ylim(0, 1.2)
    ax.legend(fontsize="x-small", ncol=min(shares.shape[1], 4), loc="upper center")
    fig.tight_layout()
    return fig


def mix_heatmaps(streams: dict) -> Figure:
    """Token-mean residual mixing M (A_r or H_res) per layer and branch; M[i, j] = input i -> output j."""
    cells = [(i, b, np.array(layer[b]["mix"])) for i, layer in enumerate(streams["layers"])
             for b in ("attn", "ffn") if "mix" in layer[b]]
    L = len(streams["layers"])
    fig, axes = plt.subplots(2, L, figsize=(1.4 * L + 1, 3.2), squeeze=False)
    vmax = max(np.abs(m).max() for _, _, m in cells)
    for ax in axes.flat:
        ax.axis("off")
    im = None
    for i, b, m in cells:
        ax = axes[0 if b == "attn" else 1, i]
        ax.axis("on")
        im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"L{i} {b}", fontsize=7)
    fig.suptitle("residual mixing M[in, out]", fontsize=9)
    fig.tight_layout()
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    return fig


def logit_spread_histogram(streams: dict) -> Figure:
    """Per-token spread (max − min) of the residual-mixing logits over every connection: the official analysis'
    histogram of log(1/ν), with its threshold of 30 for mHC's Sinkhorn."""
    spread = streams["mixing"]["logit_spread"]
    edges, counts = np.array(spread["histogram"]["edges"]), np.array(spread["histogram"]["counts"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.stairs(counts, edges, fill=True, alpha=0.75)
    title = "mixing logit spread per token and connection"
    if "fraction_above_30" in spread:
        ax.axvline(30, color="k", lw=0.8, ls="--")
        title += f" ({spread['fraction_above_30']:.1%} > 30)"
    ax.set_xlabel("max − min of the logits (log 1/ν)")
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _box(ax, dist: dict, title: str) -> None:
    """Box plot per stream from a ``stream_distribution`` (box q25–q75, whiskers q05–q95, dots min and max)."""
    n = len(dist["median"])
    stats = [{"med": dist["median"][j], "q1": dist["q25"][j], "q3": dist["q75"][j], "whislo": dist["q05"][j],
              "whishi": dist["q95"][j], "fliers": [dist["min"][j], dist["max"][j]], "label": str(j)} for j in range(n)]
    ax.bxp(stats, showfliers=True)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_title(title, fontsize=8)


def mix_sum_boxes(streams: dict) -> Figure:
    """Per-token sums of the mixings (all connections pooled) and of their product over depth, per stream
    index, for each axis that is not exact by construction (the official analysis' box plots)."""
    panels = [(section, axis) for section in ("mixing", "depth") for axis in ("column", "row")
              if f"{axis}_sums_per_token" in streams.get(section, {})]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.6, 3.2), squeeze=False)
    for ax, (section, axis) in zip(axes[0], panels):
        what = "Σ_i M[i, j] (column)" if axis == "column" else "Σ_j M[i, j] (row)"
        _box(ax, streams[section][f"{axis}_sums_per_token"],
             f"{what}\n{'every connection' if section == 'mixing' else 'product over depth'}")
        ax.set_xlabel("output stream j" if axis == "column" else "input stream i", fontsize=8)
    axes[0][0].set_ylabel("sum per token")
    fig.tight_layout()
    return fig


def amax_over_depth(streams: dict) -> Figure:
    """Token-mean Amax gain per connection: of its own mixing and of the composite from it to the last
    connection (the mHC paper's Fig. 3 / 7), forward and backward where not fixed at 1."""
    conns = [layer[b] for layer in streams["layers"] for b in ("attn", "ffn") if "mix" in layer[b]]
    depth = streams["depth"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = np.arange(len(conns))
    for k, (name, color) in enumerate((("forward", "C0"), ("backward", "C1"))):
        if f"suffix_amax_{name}" not in depth:
            continue
        ax.plot(x, [m[f"mix_amax_{name}"] for m in conns], color=color, ls="--", marker=".",
                label=f"{name}, one connection")
        ax.plot(x, depth[f"suffix_amax_{name}"], color=color, marker="o", ms=3, label=f"{name}, composite to the end")
    ax.axhline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("connection (2·layer + branch)")
    ax.set_ylabel("Amax gain (token mean)")
    if max(ax.get_ylim()) > 10:
        ax.set_yscale("log")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def domain_expert_heatmap(domains: dict) -> Figure:
    """Domain × expert usage over all MoE layers (rows sum to 1), with each domain's specialization."""
    d = domains["all_layers"]
    usage = np.array(d["usage"])  # [D, E]
    fig, ax = plt.subplots(figsize=(max(4, 0.25 * usage.shape[1] + 3), max(2.5, 0.3 * usage.shape[0] + 1.5)))
    im = ax.imshow(usage, aspect="auto", cmap="magma")
    ax.set_yticks(range(len(d["domains"])), [f"{n} (JS {s:.3f})" for n, s in zip(d["domains"], d["specialization"])],
                  fontsize=7)
    ax.set_xlabel("expert")
    ax.set_title("expert usage per domain")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def figures(report) -> dict[str, Figure]:
    """Every figure that applies to the report (a DiagnosticsReport or its JSON form), by name
    ("experts/load_heatmap", "streams/norm_shares", ...)."""
    if hasattr(report, "to_dict"):
        report = report.to_dict()  # the figures read the lists of the JSON form
    out: dict[str, Figure] = {}
    experts = report.get("experts")
    if experts and experts["moe_layers"]:
        out["experts/load_heatmap"] = expert_load_heatmap(experts)
        if "group_load" in experts["layers"][experts["moe_layers"][0]]:
            out["experts/group_loads"] = group_load_bars(experts)
    domains = report.get("domains")
    if domains and domains["all_layers"]["domains"]:
        out["experts/domain_usage"] = domain_expert_heatmap(domains)
    streams = report.get("streams")
    if streams:
        out["streams/norm_shares"] = stream_norm_shares(streams)
        if any("mix" in layer[b] for layer in streams["layers"] for b in ("attn", "ffn")):
            out["streams/mix"] = mix_heatmaps(streams)
        if "logit_spread" in streams.get("mixing", {}):
            out["streams/logit_spread"] = logit_spread_histogram(streams)
        if any(f"{a}_sums_per_token" in streams.get(s, {}) for s in ("mixing", "depth") for a in ("column", "row")):
            out["streams/mix_sums"] = mix_sum_boxes(streams)
        if any(k.startswith("suffix_amax_") for k in streams.get("depth", {})):
            out["streams/amax_depth"] = amax_over_depth(streams)
    return out
