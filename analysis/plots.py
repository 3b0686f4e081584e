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


def figures(report: dict) -> dict[str, Figure]:
    """Every figure that applies to the report, by name ("experts/load_heatmap", "streams/norm_shares", ...)."""
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
    return out
