"""Routing metadata shared by the grouped backends: sort the T·K (token, expert) pairs by expert.

All on device, no host sync: counts come from ``bincount`` and offsets from ``cumsum``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ExpertPermutation:
    sorted_pair: Tensor  # [T*K] int64  flat (token, slot) pair index p = t*K + k, ordered by expert (stable)
    sorted_token: Tensor  # [T*K] int64  token index t of each sorted pair
    counts: Tensor  # [E] int64  pairs routed to each expert
    offsets: Tensor  # [E] int32  exclusive end of each expert's rows in sorted order (grouped_mm's `offs`)


def permute_by_expert(expert_idx: Tensor, num_experts: int) -> ExpertPermutation:
    """expert_idx [T, K] -> sorted pair order, token of each sorted row, per-expert counts and end offsets."""
    K = expert_idx.shape[1]
    flat = expert_idx.flatten()  # [T*K]
    sorted_pair = torch.argsort(flat, stable=True)  # [T*K]
    counts = torch.bincount(flat, minlength=num_experts)  # [E]
    offsets = torch.cumsum(counts, dim=0).to(torch.int32)  # [E]
    return ExpertPermutation(sorted_pair, sorted_pair // K, counts, offsets)
