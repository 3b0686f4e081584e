"""Expert parallelism: dispatch (token, expert) pairs to the ranks that hold the experts, combine the outputs back.

The E routed experts of a layer are split over the N ranks of an expert-parallel process group in contiguous
blocks: rank r holds experts [r·E/N, (r+1)·E/N). Routing stays where the tokens are (each rank routes its own
tokens with the replicated router); only the expert computation moves. For one layer, on every rank:

  dispatch:  sort the T·K pairs by expert (hence by owning rank)       x_send [T·K, d]
             exchange per-expert counts (all-to-all of E integers)      recv_counts [N, E/N]
             all-to-all of the token rows, uneven splits (dropless)     x_recv [R, d], rows by (source rank, expert)
  compute:   the local experts on the received rows (any backend)       y_recv [R, d]
  combine:   reverse all-to-all                                         y_sorted [T·K, d] in the sorted pair order
             out_t = Σ_k w_tk · y_tk (fp32 sum, the local weights)      out [T, d]

This is the layout of torchtitan's and OLMo-core's expert parallelism (GShard's all-to-all dispatch without a
capacity limit). The combine weights never travel: they multiply the returned rows on the token's own rank, so
their gradient ⟨dout_t, y_tk⟩ is local too. The all-to-all is an autograd Function whose backward is the reverse
all-to-all (gradients of the received rows go back to the rank that sent them). The split sizes need one
device-to-host copy per layer and direction (the collective must know how many rows each rank sends); the
expert compute itself is unchanged.

``torch.distributed.nn.functional.all_to_all_single`` (the differentiable one) is deprecated in torch 2.13 in
favour of the private ``torch.distributed._functional_collectives``; the twelve lines of ``_AllToAll`` below
use only the public ``dist.all_to_all_single``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor


class _AllToAll(torch.autograd.Function):
    """Rows of ``x`` split by ``input_splits`` go to the ranks of ``group`` in order; the result holds the rows
    received from each rank in rank order (``output_splits``). Backward: the same exchange in reverse."""

    @staticmethod
    def forward(ctx, x: Tensor, output_splits: list[int], input_splits: list[int], group) -> Tensor:
        ctx.output_splits, ctx.input_splits, ctx.group = output_splits, input_splits, group
        out = x.new_empty(sum(output_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_x = grad.new_empty(sum(ctx.input_splits), *grad.shape[1:])
        dist.all_to_all_single(grad_x, grad.contiguous(), ctx.input_splits, ctx.output_splits, group=ctx.group)
        return grad_x, None, None, None


def all_to_all(x: Tensor, output_splits: list[int], input_splits: list[int], group=None) -> Tensor:
    """Differentiable ``all_to_all_single`` along dim 0 with uneven splits. x [sum(input_splits), ...] ->
    [sum(output_splits), ...]; ``input_splits[j]`` rows go to rank j, ``output_splits[i]`` rows come from rank i."""
    return _AllToAll.apply(x, list(output_splits), list(input_splits), group)


@dataclass
class ExpertDispatch:
    """What ``combine`` needs to bring the expert outputs of a ``dispatch`` back to their tokens."""

    sorted_pair: Tensor  # [T*K] int64  flat pair index t·K + k in the order the rows were sent (by expert)
    send_splits: list[int]  # [N] rows sent to each rank
    recv_splits: list[int]  # [N] rows received from each rank
    recv_counts: Tensor  # [N, E/N] int64  rows received from each rank for each local expert
    num_tokens: int  # T
    top_k: int  # K


def dispatch(x: Tensor, expert_idx: Tensor, num_experts: int, group=None) -> tuple[Tensor, Tensor, ExpertDispatch]:
    """Send every (token, expert) pair's token row to the rank that holds the expert.

    x [T, d], expert_idx [T, K] global expert ids -> (x_recv [R, d], local_expert [R] int64 in [0, E/N), plan).
    Received rows are ordered by source rank, then by local expert.
    """
    N = dist.get_world_size(group)
    if num_experts % N:
        raise ValueError(f"num_experts={num_experts} must be divisible by the expert-parallel size {N}")
    E_local = num_experts // N
    T, K = expert_idx.shape
    flat = expert_idx.flatten()  # [T*K]
    sorted_pair = torch.argsort(flat, stable=True)  # [T*K] by expert, so by owning rank (contiguous blocks)
    counts = torch.bincount(flat, minlength=num_experts)  # [E] pairs this rank sends to each expert
    recv_counts = torch.empty_like(counts)  # block i: rank i's counts for this rank's experts
    dist.all_to_all_single(recv_counts, counts, group=group)
    recv_counts = recv_counts.view(N, E_local)  # [N, E/N]
    splits = torch.stack([counts.view(N, E_local).sum(1), recv_counts.sum(1)]).tolist()  # one host sync
    send_splits, recv_splits = splits
    x_send = x.index_select(0, sorted_pair // K)  # [T*K, d]
    x_recv = all_to_all(x_send, recv_splits, send_splits, group)  # [R, d]
    local_expert = torch.arange(E_local, device=x.device).repeat(N).repeat_interleave(
        recv_counts.flatten(), output_size=x_recv.shape[0])  # [R]
    return x_recv, local_expert, ExpertDispatch(sorted_pair, send_splits, recv_splits, recv_counts, T, K)


def combine(y_recv: Tensor, expert_weight: Tensor, plan: ExpertDispatch, group=None) -> Tensor:
    """Return the expert outputs of ``dispatch``'s rows to their tokens and sum them with the combine weights.

    y_recv [R, d] (rows as received), expert_weight [T, K] -> out [T, d], out_t = Σ_k w_tk · y_tk (fp32 sum).
    """
    T, K = plan.num_tokens, plan.top_k
    y_sorted = all_to_all(y_recv, plan.send_splits, plan.recv_splits, group)  # [T*K, d] in sorted pair order
    unsort = torch.empty_like(plan.sorted_pair)
    unsort[plan.sorted_pair] = torch.arange(T * K, device=unsort.device)  # position of each pair in sorted order
    y_pair = y_sorted.index_select(0, unsort).view(T, K, y_recv.shape[1])  # [T, K, d]
    return (y_pair.float() * expert_weight.float().unsqueeze(-1)).sum(1).to(y_recv.dtype)  # [T, d]


LocalExperts = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x [R, d], expert_idx [R, 1], weight [R, 1]) -> [R, d]


def expert_parallel_experts(x: Tensor, expert_idx: Tensor, expert_weight: Tensor, num_experts: int,
                            local_experts: LocalExperts, group=None) -> Tensor:
    """Routed experts sharded over ``group``: dispatch -> ``local_experts`` on the received rows -> combine.

    x [T, d], expert_idx [T, K] global ids, expert_weight [T, K] -> [T, d]; same result as running all
    ``num_experts`` experts locally. ``local_experts`` computes this rank's E/N experts on rows given as
    one (row, local expert) pair each, with weight 1 (the weights are applied in ``combine``).

    Every rank of ``group`` must call this for every MoE layer in the same order (forward and backward are
    collectives), also when it routes no token to some rank or receives none.
    """
    x_recv, local_expert, plan = dispatch(x, expert_idx, num_experts, group)
    ones = x_recv.new_ones(x_recv.shape[0], 1)  # [R, 1]
    y_recv = local_experts(x_recv, local_expert.unsqueeze(1), ones)  # [R, d]
    if x_recv.shape[0] == 0 and x_recv.requires_grad:
        # No rows here: keep the (empty) result attached to x_recv, so that in backward this rank too runs the
        # reverse all-to-all of the dispatch that the other ranks wait for. (``local_experts`` must likewise keep
        # it attached to its weights.)
        y_recv = y_recv + 0.0 * x_recv.sum()
    return combine(y_recv, expert_weight, plan, group)
