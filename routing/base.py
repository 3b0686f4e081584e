"""The routing interface every router implements, and what all routers share (capacity, recompute marking)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .stats import ExpertLayerMetrics, load_metrics


@dataclass
class RoutingResult:
    """What a router decides for T tokens. Statistics are derived from ``expert_idx`` by ``routing.stats``."""

    expert_idx: Tensor  # [T, K] int64  chosen experts per token
    expert_weight: Tensor  # [T, K] combine weights, dtype of the activations
    router_logits: Tensor  # [T, E] fp32  raw logits (z-loss, analysis)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # named, already scaled by their coefficients
    dropped: Tensor | None = None  # [T, K] bool  pairs over capacity (weight set to 0); None when dropless

    @property
    def aux_loss(self) -> Tensor:
        """Sum of the scaled aux losses (0 when the router has none)."""
        if not self.aux_losses:
            return self.router_logits.new_zeros(())
        return torch.stack(list(self.aux_losses.values())).sum()


@contextlib.contextmanager
def routers_recomputing(module: nn.Module) -> Iterator[None]:
    """Within this block every router in ``module`` (``module`` itself included) knows that the forward it runs is
    an activation-checkpoint recompute, the replay of a forward that already ran: routers skip their state updates
    (EMA, load and global-batch counts) then, so each update happens once per forward and the replay sees exactly
    the state the original forward used."""
    routers = [m for m in module.modules() if isinstance(m, Router)]
    before = [r.recomputing for r in routers]
    for router in routers:
        router.recomputing = True
    try:
        yield
    finally:
        for router, value in zip(routers, before):
            router.recomputing = value


def recompute_aware(checkpoint_fn: Callable, module: nn.Module) -> Callable:
    """``checkpoint_fn`` (``torch.utils.checkpoint.checkpoint``, or the partial of it that transformers'
    ``activation_checkpointing_enable`` builds) made to mark the recompute of ``module``'s routers: the
    checkpointed function runs as given the first time (the forward) and under ``routers_recomputing(module)``
    every later time (the replays in backward), with reentrant and non-reentrant checkpointing alike. HizooBlock
    checkpoints through it; wrap your own checkpointing of a module that holds routers the same way:
    ``recompute_aware(checkpoint, block)(block, x, use_reentrant=False)``. (torch has no public flag that says
    whether the autograd engine is replaying a forward, so hizoo's checkpointing says it.)"""

    def checkpoint_marking_recompute(function: Callable, *args, **kwargs):
        calls = 0

        def run(*inner_args, **inner_kwargs):
            nonlocal calls
            calls += 1
            if calls == 1:
                return function(*inner_args, **inner_kwargs)
            with routers_recomputing(module):
                return function(*inner_args, **inner_kwargs)

        return checkpoint_fn(run, *args, **kwargs)

    return checkpoint_marking_recompute


# The allowed values of the capacity options (HizooConfig's FIELD_CHOICES lists these same tuples)
CAPACITY_RULES = ("reference", "ceil")
CAPACITY_PRIORITIES = ("slot", "token")


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float,
                    rule: str = "reference", min_capacity: int = 4) -> int:
    """Routing pairs one expert may take from ``num_tokens`` tokens (Switch Transformer, Eq. 3, top-K form).

    - ``"reference"`` (the Hi-MoE code's ``get_capacity``): C = floor(K · cf · T / E), rounded up to an even
      number, and at least ``min_capacity``;
    - ``"ceil"`` (hizoo's earlier rule): C = ceil(cf · T · K / E), no minimum.
    """
    if rule == "reference":
        capacity = math.floor(top_k * capacity_factor * num_tokens / num_experts)  # same float order as the code
        capacity += capacity % 2
        return max(capacity, min_capacity)
    if rule == "ceil":
        return math.ceil(capacity_factor * num_tokens * top_k / num_experts)
    raise ValueError(f"capacity_rule={rule!r} is not one of {CAPACITY_RULES}")


def apply_capacity(expert_idx: Tensor, expert_weight: Tensor, num_experts: int, capacity_factor: float,
                   rule: str = "reference", min_capacity: int = 4, priority: str = "slot") -> tuple[Tensor, Tensor]:
    """Switch-style capacity: each expert takes at most C = ``expert_capacity(...)`` pairs; the overflow pairs
    keep their expert index but get weight 0 (the other weights are not renormalized, as in the reference).

    Which pairs an expert keeps, first come first served:
    - ``priority="slot"`` (the Hi-MoE code's ``_route_to_slots``): every token's slot 0 in token order, then
      every token's slot 1, ... — a token's first choice outranks any token's second choice;
    - ``priority="token"`` (hizoo's earlier order): token by token, each token's slots in order.

    expert_idx [T, K], expert_weight [T, K] -> (expert_weight [T, K] with zeros, dropped [T, K] bool)
    """
    if priority not in CAPACITY_PRIORITIES:
        raise ValueError(f"capacity_priority={priority!r} is not one of {CAPACITY_PRIORITIES}")
    T, K = expert_idx.shape
    capacity = expert_capacity(T, K, num_experts, capacity_factor, rule, min_capacity)
    flat = (expert_idx.t() if priority == "slot" else expert_idx).flatten()  # [T*K] pairs in arrival order
    order = torch.argsort(flat, stable=True)  # [T*K] grouped by expert, arrival order kept inside each expert
    counts = torch.bincount(flat, minlength=num_experts)  # [E]
    starts = counts.cumsum(0) - counts  # [E] first sorted index of each expert
    position = torch.empty_like(flat)
    position[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]  # rank within expert
    over = position >= capacity  # [T*K]
    dropped = over.view(K, T).t() if priority == "slot" else over.view(T, K)  # [T, K]
    return expert_weight.masked_fill(dropped, 0.0), dropped


class Router(nn.Module):
    """Base class: ``forward(x [T, d], seq_len=None) -> RoutingResult``; the gate weight is ``self.weight`` [E, d].

    ``seq_len`` (tokens are B sequences of ``seq_len`` in order) is only needed by sequence-wise losses.
    Capacity (keyword arguments every router accepts): ``capacity_factor`` for training forwards (None:
    dropless), ``eval_capacity_factor`` for eval forwards (None: the same as ``capacity_factor``), and
    ``capacity_rule``, ``min_capacity``, ``capacity_priority`` as in ``expert_capacity``/``apply_capacity``.
    ``recomputing`` is True while the forward is an activation-checkpoint replay (``routers_recomputing``,
    ``recompute_aware``); routers update their state only when it is False.

    Training-batch metrics (as OLMo-core's routers keep them): every training forward that is not a replay adds
    its routed pairs per expert and its dropped pairs to detached counters (``metric_counts``: [E + 1], no host
    sync). Once per optimizer step ``models.moe.update_router_states`` sums them over data-parallel ranks, hands
    the sums to ``end_of_step_metrics`` (which also clears the counters) and ``compute_metrics(n_groups)`` turns
    the last step's sums into an ``ExpertLayerMetrics`` with the same functions as the held-out diagnostics.
    """

    recomputing = False

    def __init__(self, num_experts: int, hidden_size: int, top_k: int, capacity_factor: float | None = None,
                 eval_capacity_factor: float | None = None, capacity_rule: str = "reference", min_capacity: int = 4,
                 capacity_priority: str = "slot"):
        super().__init__()
        if capacity_rule not in CAPACITY_RULES:
            raise ValueError(f"capacity_rule={capacity_rule!r} is not one of {CAPACITY_RULES}")
        if capacity_priority not in CAPACITY_PRIORITIES:
            raise ValueError(f"capacity_priority={capacity_priority!r} is not one of {CAPACITY_PRIORITIES}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.capacity_rule, self.min_capacity, self.capacity_priority = capacity_rule, min_capacity, capacity_priority
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self._metric_counts: Tensor | None = None  # [E + 1] int64: pairs per expert, then dropped pairs
        self.step_counts: Tensor | None = None  # [E + 1] fp64: the last optimizer step's, summed over ranks

    def count_routing(self, expert_idx: Tensor, dropped: Tensor | None) -> None:
        """Add one training forward's expert_idx [T, K] and dropped [T, K] (or None) to the metric counters."""
        flat = expert_idx.detach().flatten().long()  # [T*K]
        if self._metric_counts is None or self._metric_counts.device != flat.device:
            self._metric_counts = torch.zeros(self.num_experts + 1, dtype=torch.long, device=flat.device)
        # scatter_add rather than bincount: no device-to-host sync on GPU (expert_idx comes from topk: in range)
        self._metric_counts[: self.num_experts].scatter_add_(0, flat, torch.ones_like(flat))
        if dropped is not None:
            self._metric_counts[self.num_experts] += dropped.detach().sum()

    def metric_counts(self) -> Tensor:
        """This rank's counts since the last step [E + 1] (routed pairs per expert, then dropped pairs), int64."""
        if self._metric_counts is None:
            return torch.zeros(self.num_experts + 1, dtype=torch.long, device=self.weight.device)
        return self._metric_counts

    def reset_metrics(self) -> None:
        """Clear the counters (a new optimizer step starts)."""
        if self._metric_counts is not None:
            self._metric_counts.zero_()

    def end_of_step_metrics(self, counts: Tensor) -> None:
        """Keep counts [E + 1] (this step's, summed over ranks) for ``compute_metrics`` and clear the counters."""
        self.step_counts = counts.detach().double()
        self.reset_metrics()

    def compute_metrics(self, n_groups: int = 1) -> ExpertLayerMetrics | None:
        """The last optimizer step's ExpertLayerMetrics (``routing.stats.load_metrics``), or None before the first
        step or when that step routed nothing (no training forward)."""
        if self.step_counts is None or float(self.step_counts[: self.num_experts].sum()) == 0:
            return None
        counts = self.step_counts.cpu()
        pairs, dropped = counts[: self.num_experts], float(counts[self.num_experts])
        return load_metrics(pairs, n_groups, dropped / float(pairs.sum()))

    def logits(self, x: Tensor) -> Tensor:
        """Router logits g = W_r x in fp32 (routing decisions are precision-sensitive), no bias."""
        return torch.nn.functional.linear(x.float(), self.weight.float())  # [T, E]

    def finish(self, expert_idx: Tensor, expert_weight: Tensor, logits: Tensor, aux: dict[str, Tensor],
               dtype: torch.dtype) -> RoutingResult:
        """Apply the capacity limit of this mode (training or eval; if any) and cast the combine weights to the
        activations' dtype."""
        factor = self.capacity_factor
        if not self.training and self.eval_capacity_factor is not None:
            factor = self.eval_capacity_factor
        dropped = None
        if factor is not None:
            expert_weight, dropped = apply_capacity(expert_idx, expert_weight, self.num_experts, factor,
                                                    self.capacity_rule, self.min_capacity, self.capacity_priority)
        if self.training and not self.recomputing:
            self.count_routing(expert_idx, dropped)
        return RoutingResult(expert_idx, expert_weight.to(dtype), logits, aux, dropped)

    def forward(self, x: Tensor, seq_len: int | None = None) -> RoutingResult:  # pragma: no cover - interface
        raise NotImplementedError
