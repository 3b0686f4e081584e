"""Expert-balance statistics from routing decisions: pure functions of ``expert_idx`` [T, K].

Definitions (loads are fractions of the T·K routed (token, expert) pairs, so they sum to 1):
- load_i        = #pairs routed to expert i / (T·K)                       [E]
                  (router selections, including pairs later dropped by a capacity limit)
- CV            = std(load) / mean(load)  (population std)                 0 when balanced
- MaxVio        = (max(load) − mean(load)) / mean(load)                    0 when balanced
- entropy       = −Σ_i load_i log load_i, and its normalized form / log E  (1 when balanced)
- group loads   = Σ_{i∈g} load_i over G contiguous groups of E/G           [G]
- group CV      = CV of the group loads; max group share = max_g group load
- within-group collapse of group g = max_{i∈g} load_i / Σ_{i∈g} load_i   (1/(E/G) when even, 1 when one
  expert takes all of the group's traffic); reported per group and as the mean over used groups
- drop rate     = fraction of the T·K pairs dropped by the capacity limit (0 when dropless)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor


def expert_counts(expert_idx: Tensor, num_experts: int) -> Tensor:
    """expert_idx [T, K] int -> number of (token, expert) pairs routed to each expert [E] int64, on expert_idx's
    device (exact at any count; callers cast: fp32 for the routers' losses and buffers, fp64 for statistics).

    The one count every router and statistic uses. An index outside [0, E) raises ``ValueError``: ``bincount``
    would return more than E entries for it, or fail on a negative one."""
    flat = expert_idx.flatten().long()  # [T*K]
    try:  # no range check of its own: bincount already reads min and max (a host sync on GPU); only errors re-read
        counts = torch.bincount(flat, minlength=num_experts)  # [E], or longer when an index is >= E
    except RuntimeError:  # a negative index
        counts = None
    if counts is None or counts.numel() != num_experts:
        raise ValueError(f"expert_idx has values outside [0, {num_experts}): "
                         f"min {int(flat.min())}, max {int(flat.max())}")
    return counts


def expert_load(expert_idx: Tensor, num_experts: int) -> Tensor:
    """expert_idx [T, K] -> load [E]: fraction of the T·K pairs routed to each expert (sums to 1)."""
    counts = expert_counts(expert_idx, num_experts).double()
    total = counts.sum()
    if total == 0:
        raise ValueError("expert_idx is empty: no tokens were routed")
    return counts / total


def coefficient_of_variation(load: Tensor) -> float:
    """load [N] -> std/mean with the population std (0 for a perfectly even load)."""
    load = load.double()
    return float(load.std(correction=0) / load.mean())


def max_violation(load: Tensor) -> float:
    """load [E] -> MaxVio = (max − mean)/mean (0 for a perfectly even load; E − 1 when one expert takes all)."""
    load = load.double()
    return float((load.max() - load.mean()) / load.mean())


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy −Σ p log p in nats of distributions p [..., N] along ``dim``, with 0·log 0 = 0 (the limit),
    so a distribution with empty entries is finite and exact. p must already sum to 1 along ``dim``.
    [..., N] -> [...], in p's dtype. hizoo's one entropy: loads, stream shares, domain usage."""
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=dim)


def load_entropy(load: Tensor, normalized: bool = False) -> float:
    """load [E] (sums to 1) -> Shannon entropy −Σ p log p in nats (0·log 0 = 0); divided by log E if
    ``normalized`` (then 1 for an even load, 0 when one expert takes all)."""
    p = load.double() / load.double().sum()
    h = float(entropy(p))
    if normalized:
        return h / math.log(p.numel()) if p.numel() > 1 else 1.0
    return h


def group_loads(load: Tensor, n_groups: int) -> Tensor:
    """load [E] -> loads of the G contiguous groups [G]."""
    E = load.numel()
    if n_groups < 1 or E % n_groups:
        raise ValueError(f"n_groups={n_groups} must divide num_experts={E}")
    return load.view(n_groups, E // n_groups).sum(dim=-1)


def within_group_collapse(load: Tensor, n_groups: int) -> Tensor:
    """load [E] -> per group the share of the group's traffic taken by its busiest expert [G]
    (NaN for a group that received no traffic)."""
    grouped = load.double().view(n_groups, -1)  # [G, E/G]
    total = grouped.sum(dim=-1)
    return torch.where(total > 0, grouped.max(dim=-1).values / total.clamp_min(1e-300),
                       torch.full_like(total, float("nan")))


def drop_rate(dropped: Tensor | None) -> float:
    """dropped [T, K] bool (None when dropless) -> fraction of pairs dropped by the capacity limit."""
    if dropped is None or dropped.numel() == 0:
        return 0.0
    return float(dropped.float().mean())


@dataclass
class ExpertLayerMetrics:
    """Expert balance of one MoE layer (the definitions above). Group fields are None without groups (n_groups = 1).
    ``to_dict`` gives the report's JSON form (None fields left out), ``from_dict`` reads it back."""

    load: list[float]  # [E], sums to 1
    cv: float
    max_vio: float
    entropy: float
    entropy_normalized: float
    drop_rate: float
    group_load: list[float] | None = None  # [G]
    group_cv: float | None = None
    max_group_share: float | None = None
    group_collapse: list[float] | None = None  # [G], NaN for a group without traffic
    within_group_collapse: float | None = None  # mean over the groups with traffic

    # the scalars logged per layer (TensorBoard ``…/layerI/<name>``) and averaged over layers by ``mean_``
    SCALARS = ("cv", "max_vio", "entropy_normalized", "drop_rate", "group_cv", "max_group_share",
               "within_group_collapse")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> ExpertLayerMetrics:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"ExpertLayerMetrics has no fields {unknown}; allowed: {sorted(names)}")
        return cls(**data)

    def scalars(self) -> dict[str, float]:
        """{name: value} of the SCALARS this layer has."""
        return {k: getattr(self, k) for k in self.SCALARS if getattr(self, k) is not None}


def load_metrics(counts: Tensor, n_groups: int = 1, drop_rate: float = 0.0) -> ExpertLayerMetrics:
    """counts [E] (routed (token, expert) pairs per expert, dropped pairs included) -> ExpertLayerMetrics.

    The one computation behind every expert-balance number hizoo reports: the held-out diagnostics
    (``routing_stats`` of one forward's ``expert_idx``) and the training-batch metrics (the routers' counts over an
    optimizer step, summed over ranks: ``Router.compute_metrics``). ``drop_rate``: fraction of the pairs dropped
    by the capacity limit (``drop_rate(dropped)``, or dropped pairs / counts.sum())."""
    counts = counts.detach().double().cpu()
    total = counts.sum()
    if total == 0:
        raise ValueError("expert_idx is empty: no tokens were routed")
    load = counts / total  # [E]
    out = ExpertLayerMetrics(
        load=load.tolist(), cv=coefficient_of_variation(load), max_vio=max_violation(load),
        entropy=load_entropy(load), entropy_normalized=load_entropy(load, normalized=True), drop_rate=drop_rate)
    if n_groups > 1:
        gl = group_loads(load, n_groups)
        collapse = within_group_collapse(load, n_groups)
        used = collapse[~collapse.isnan()]
        out.group_load = gl.tolist()
        out.group_cv = coefficient_of_variation(gl)
        out.max_group_share = float(gl.max())
        out.group_collapse = collapse.tolist()
        out.within_group_collapse = float(used.mean()) if used.numel() else float("nan")
    return out


def routing_stats(expert_idx: Tensor, num_experts: int, n_groups: int = 1,
                  dropped: Tensor | None = None) -> ExpertLayerMetrics:
    """All statistics of one layer's routing. expert_idx [T, K], dropped [T, K] bool or None."""
    return load_metrics(expert_counts(expert_idx, num_experts), n_groups, drop_rate(dropped))


class LoadAccumulator:
    """Running expert counts over many batches, for the accumulated MaxVio/CV (the balance over a whole
    evaluation or logging window rather than one batch, as in the loss-free balancing paper's MaxVio_global).

    >>> acc = LoadAccumulator(num_experts=4); acc.update(expert_idx); acc.max_violation()
    """

    def __init__(self, num_experts: int, device: torch.device | str | None = None):
        self.num_experts = num_experts
        self.counts = torch.zeros(num_experts, dtype=torch.float64, device=device)  # [E]

    def update(self, expert_idx: Tensor) -> None:
        """Add one batch's routing decisions expert_idx [T, K] (selections, as in ``routing_stats``)."""
        self.add_counts(expert_counts(expert_idx.detach(), self.num_experts))

    def add_counts(self, counts: Tensor) -> None:
        """Add routed pairs per expert counts [E] (e.g. a router's counts of one optimizer step); stays on the
        accumulator's device (no host sync until a metric is read)."""
        if counts.shape != (self.num_experts,):
            raise ValueError(f"counts has shape {tuple(counts.shape)}, expected ({self.num_experts},)")
        self.counts += counts.detach().to(self.counts.device, torch.float64)

    def reset(self) -> None:
        self.counts.zero_()

    def load(self) -> Tensor:
        """Accumulated load [E] (sums to 1), on the CPU."""
        counts = self.counts.cpu()
        if counts.sum() == 0:
            raise ValueError("LoadAccumulator has no routed pairs yet")
        return counts / counts.sum()

    def max_violation(self) -> float:
        return max_violation(self.load())

    def cv(self) -> float:
        return coefficient_of_variation(self.load())
