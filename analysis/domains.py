"""Per-domain routing: which experts each data domain uses, and how specialized that use is.

usage[d, i] = fraction of domain d's routed (token, expert) pairs that go to expert i (rows sum to 1).
Specialization of domain d = Jensen–Shannon divergence (natural log, so in [0, log 2]) between usage[d] and
the average usage over all routed pairs (weighted by each domain's token count). JS rather than KL: it is
symmetric and finite when a domain never uses an expert that others use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..routing.stats import entropy


def domain_expert_counts(expert_idx: Tensor, domain_ids: Tensor, num_experts: int, num_domains: int) -> Tensor:
    """expert_idx [T, K], domain_ids [T] (domain of each token; negative = unknown, skipped)
    -> counts [D, E] float64 of (token, expert) pairs per domain and expert."""
    if domain_ids.numel() != expert_idx.shape[0]:
        raise ValueError(f"domain_ids has {domain_ids.numel()} tokens, expert_idx has {expert_idx.shape[0]}")
    dom = domain_ids.flatten().long().unsqueeze(-1).expand_as(expert_idx)  # [T, K]
    keep = dom >= 0
    if keep.any() and int(dom[keep].max()) >= num_domains:
        raise ValueError(f"domain id {int(dom[keep].max())} >= num_domains={num_domains}")
    flat = dom[keep] * num_experts + expert_idx[keep].long()
    return torch.bincount(flat, minlength=num_domains * num_experts).double().view(num_domains, num_experts)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen–Shannon divergence of distributions p [..., E] and q [E] in nats: H((p+q)/2) − (H(p)+H(q))/2."""
    m = (p + q) / 2
    return entropy(m) - (entropy(p) + entropy(q)) / 2


def domain_usage(counts: Tensor, domain_names: list[str] | None = None) -> dict:
    """counts [D, E] -> {"domains": names of domains with tokens, "usage": [D', E] rows summing to 1,
    "average": [E], "specialization": [D'] JS divergence from the average, "tokens": [D'] pair counts}."""
    D = counts.shape[0]
    names = list(domain_names) if domain_names is not None else [str(d) for d in range(D)]
    if len(names) != D:
        raise ValueError(f"{len(names)} domain names for {D} domains")
    totals = counts.sum(dim=-1)  # [D]
    present = totals > 0
    if not present.any():
        return {"domains": [], "usage": [], "average": [], "specialization": [], "tokens": []}
    usage = counts[present] / totals[present, None]  # [D', E]
    average = counts.sum(dim=0) / counts.sum()  # [E]
    spec = js_divergence(usage, average)
    return {
        "domains": [n for n, p in zip(names, present.tolist()) if p],
        "usage": usage.tolist(),
        "average": average.tolist(),
        "specialization": spec.clamp_min(0).tolist(),
        "tokens": totals[present].tolist(),
    }
