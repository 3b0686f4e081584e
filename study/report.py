"""A study's results as a Markdown table (mean ± std over seeds) and PNG figures."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..analysis.plots import figures as diagnostic_figures  # noqa: E402
from ..analysis.report import as_report  # noqa: E402
from ..models.files import atomic_write_text, save_figure  # noqa: E402

# (metric key, column title); a column is left out when no run has the metric
COLUMNS = {
    "moe": [("val_ppl", "val ppl"), ("cv", "expert CV"), ("max_vio", "MaxVio"), ("group_cv", "group CV"),
            ("within_group_collapse", "within-group collapse"), ("specialization", "domain specialization (JS)")],
    "streams": [("val_ppl", "val ppl"), ("dominant_share", "dominant share"),
                ("dominant_share_max", "dominant share, worst layer"), ("effective_streams", "effective streams"),
                ("stream_cosine", "stream cosine"), ("mix_identity_distance_per_token", "‖M_t − I‖_F"),
                ("mix_identity_distance", "‖M̄ − I‖_F"), ("column_sum_deviation", "column-sum dev."),
                ("row_sum_deviation", "row-sum dev."), ("amax_forward", "Amax fwd"), ("amax_backward", "Amax bwd"),
                ("logit_spread_above_30", "spread > 30"), ("ablation_max", "ablation Δloss max"),
                ("ablation_min", "ablation Δloss min")],
}
REFERENCE = {"moe": "topk", "streams": "plain"}  # the variant the relative perplexity is measured against
# what a metric named in a run's "exact_by_construction" shows in the table (it is left out of the metrics)
EXACT_CELL = {"column_sum_deviation": "0 (exact)", "row_sum_deviation": "0 (exact)", "amax_forward": "1 (exact)",
              "amax_backward": "1 (exact)"}

METRIC_NOTES = {
    "moe": [
        "expert CV, MaxVio: std/mean and (max − mean)/mean of the experts' share of routed (token, expert) pairs on "
        "held-out sequences, averaged over layers (0 = perfectly even).",
        "group CV: the same over expert groups, with each router's own groups (grouped routers only).",
        "within-group collapse: the busiest expert's share of its group's load (1/(E/G) = even, 1 = one expert "
        "takes the whole group).",
        "domain specialization: Jensen–Shannon divergence (nats) between a domain's expert usage and the average, "
        "averaged over the corpus's domains (standard-library packages); higher = domains use different experts.",
    ],
    "streams": [
        "dominant share: the largest stream's share of the residual norm, averaged over layers (1/n = even, 1 = one "
        "stream carries everything); worst layer: its maximum over layers.",
        "effective streams: exp(entropy of the norm shares), averaged over layers (n = even, 1 = collapsed).",
        "stream cosine: mean pairwise cosine similarity of the streams, averaged over tokens and layers (1 = "
        "all streams point the same way: n copies of one residual, whatever their norm shares).",
        "‖M_t − I‖_F: distance of each token's residual mixing from the identity, averaged over tokens, layers "
        "and branches (0 = the streams never exchange information); ‖M̄ − I‖_F: the same for the token-mean mixing "
        "(smaller when tokens mix differently: the average hides it).",
        "column-sum dev., row-sum dev.: mean |sum − 1| of each token's Σ_i M[i, j] (weight an output stream "
        "receives; the stream-collapse analysis' column sums) and Σ_j M[i, j] (weight an input stream sends), over "
        "every connection. '(exact)' marks the axis a kind fixes by construction: both for mHC-lite (permutation "
        "mixture), the one Sinkhorn normalizes last for mHC; HC fixes none.",
        "Amax fwd / bwd: mHC's Amax gain magnitude of each token's product of the mixings over depth, max absolute "
        "row sum of H_res[out, in] (forward signal) and max absolute column sum (backward gradient), averaged over "
        "tokens as the mHC paper plots it (1 = no amplification; fixed at 1 on an exact axis).",
        "spread > 30: share of (token, connection) pairs whose pre-Sinkhorn logits span more than 30 (log(1/ν) of "
        "the stream-collapse paper: Sinkhorn converges too slowly to make the other axis exact); mHC only.",
        "ablation Δloss: increase of the held-out loss when one stream's contribution to the output is zeroed "
        "(Σ_{s≠j} norm(H_s) for stream_reduce='norm_sum', norm(Σ_{s≠j} H_s) for 'sum_norm'); max and min over "
        "streams (a dominant stream shows as a large max and a near-zero min).",
    ],
}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def by_variant(results: list[dict]) -> dict[str, list[dict]]:
    """Results grouped by variant, in first-seen order."""
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(r["variant"], []).append(r)
    return out


def _fmt(mean: float, std: float, n: int) -> str:
    if not math.isfinite(mean):
        return "–"
    digits = 2 if abs(mean) >= 10 else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def table(study: str, results: list[dict]) -> str:
    """Markdown table: one row per variant, mean ± std over its seeds for every metric some run has."""
    groups = by_variant(results)
    columns = [(k, t) for k, t in COLUMNS[study]
               if any(k in r["metrics"] or k in r["metrics"].get("exact_by_construction", ()) for r in results)]
    ref = groups.get(REFERENCE[study])
    ref_ppl = mean_std([r["metrics"]["val_ppl"] for r in ref])[0] if ref else None
    head = ["variant", "params", "active", "seeds"] + [t for _, t in columns]
    if ref_ppl:
        head.insert(5, f"ppl vs {REFERENCE[study]}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for runs in groups.values():
        cells = [runs[0]["label"], _count(runs[0]["params"]), _count(runs[0]["active_params"]), str(len(runs))]
        for key, _ in columns:
            values = [r["metrics"][key] for r in runs if key in r["metrics"]]
            exact = all(key in r["metrics"].get("exact_by_construction", ()) for r in runs)
            cells.append(_fmt(*mean_std(values), len(values)) if values else EXACT_CELL[key] if exact else "–")
        if ref_ppl:
            ppl = mean_std([r["metrics"]["val_ppl"] for r in runs])[0]
            cells.insert(5, f"{(ppl / ref_ppl - 1) * 100:+.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(study: str, results: list[dict], command: str) -> str:
    """The whole results page of a study: setup, table, metric definitions, figure list."""
    first = results[0]
    seeds = sorted({r["seed"] for r in results})
    minutes = sum(r["seconds"] for r in results) / 60
    lines = [
        f"# hizoo study: {study} ({first['scale']} scale)", "",
        f"Command: `{command}`", "",
        f"Every run: {first['steps']} steps, {first['tokens']:,} training tokens; seeds {seeds} (model init and "
        f"data order); mean ± sample std over seeds. Validation perplexity on the held-out documents of the "
        f"corpus; diagnostics on {first['report']['tokens']:,} held-out tokens. {len(results)} runs, "
        f"{minutes:.1f} minutes of training and evaluation.", "",
        table(study, results), "",
    ]
    lines += [f"- {note}" for note in METRIC_NOTES[study]]
    lines += ["", "Figures: `curves.png` (validation perplexity over training), "
              + ("`balance.png` (expert CV and MaxVio per variant), " if study == "moe" else
                 "`stream_dominance.png` (dominant share per layer), ")
              + "`figures/<variant>_*.png` (diagnostics of each variant's first seed). "
              "TensorBoard: `tensorboard --logdir tensorboard`.", ""]
    return "\n".join(lines)


def _style(i: int) -> dict:
    """Line style of the i-th variant: ten colors, then the same colors dashed (studies have up to 20)."""
    return {"color": plt.cm.tab10(i % 10), "ls": "-" if i < 10 else "--"}


def curves_figure(results: list[dict]):
    """Validation perplexity against step, mean over seeds with a ±std band, one line per variant."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, runs) in enumerate(by_variant(results).items()):
        steps = [s for s, _ in runs[0]["curve"]["val"]]
        if not steps:
            continue
        n = min(len(r["curve"]["val"]) for r in runs)
        ppl = np.exp(np.array([[ce for _, ce in r["curve"]["val"][:n]] for r in runs]))  # [seeds, points]
        mean, std = ppl.mean(axis=0), ppl.std(axis=0)
        ax.plot(steps[:n], mean, marker="o", ms=3, label=name, **_style(i))
        ax.fill_between(steps[:n], mean - std, mean + std, alpha=0.15, color=_style(i)["color"])
    ax.set_xlabel("step")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.legend(fontsize="x-small", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def balance_figure(results: list[dict]):
    """Expert CV and MaxVio per MoE variant (mean over seeds, std as error bars)."""
    groups = {k: v for k, v in by_variant(results).items() if "cv" in v[0]["metrics"]}
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, title in ((axes[0], "cv", "expert CV"), (axes[1], "max_vio", "MaxVio")):
        stats = [mean_std([r["metrics"][key] for r in runs]) for runs in groups.values()]
        ax.bar(range(len(groups)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3)
        ax.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{title} (lower = more even)", fontsize=9)
    fig.tight_layout()
    return fig


def stream_dominance_figure(results: list[dict]):
    """Dominant stream share per layer (mean over seeds), one line per multi-stream variant: one color per
    stream_init, solid for mHC, dashed for HC."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    n, colors = None, {}
    for name, runs in by_variant(results).items():
        if "streams" not in runs[0]["report"]:
            continue
        shares = np.array([[layer.dominant_share for layer in as_report(r["report"]).streams.layers] for r in runs])
        n = as_report(runs[0]["report"]).streams.n_streams
        init = runs[0]["report"]["config"]["stream_init"]
        color = colors.setdefault(init, plt.cm.tab10(len(colors) % 10))
        ax.plot(range(shares.shape[1]), shares.mean(axis=0), marker="o", ms=3, color=color,
                ls="--" if runs[0]["report"]["config"]["residual"] == "hc" else "-", label=name)
    if n:
        ax.axhline(1 / n, color="k", lw=0.8, ls=":", label=f"even (1/{n})")
    ax.set_xlabel("layer")
    ax.set_ylabel("dominant stream's norm share")
    ax.legend(fontsize="x-small", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write(study: str, results: list[dict], out: Path, command: str) -> Path:
    """Write ``results.md``, the figures and the table as TensorBoard text to ``out``; returns the Markdown file."""
    study_figures = {"curves": curves_figure(results)}
    study_figures["balance" if study == "moe" else "stream_dominance"] = (
        balance_figure(results) if study == "moe" else stream_dominance_figure(results))
    for name, fig in study_figures.items():
        save_figure(fig, out / f"{name}.png", dpi=110)
        plt.close(fig)
    (out / "figures").mkdir(exist_ok=True)
    for name, runs in by_variant(results).items():
        first = min(runs, key=lambda r: r["seed"])
        for tag, fig in diagnostic_figures(first["report"]).items():
            save_figure(fig, out / "figures" / f"{name}_{tag.replace('/', '_')}.png", dpi=110)
            plt.close(fig)
    page = out / "results.md"
    atomic_write_text(page, markdown(study, results, command))
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(out / "tensorboard" / "study") as writer:  # the table in TensorBoard's text tab
        writer.add_text(f"study/{study}", table(study, results))
    return page
