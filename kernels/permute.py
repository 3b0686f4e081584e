"""Routing metadata shared by the grouped backends: sort the T·K (token, expert) pairs by expert.

All on device, no host sync: counts come from a scatter-add of ones (``bincount`` would give the same counts, but
its output shape depends on the data, which makes ``torch.compile`` break the graph there) and offsets from
``cumsum``.
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
    counts = flat.new_zeros(num_experts).scatter_add_(0, flat, torch.ones_like(flat))  # [E]
    offsets = torch.cumsum(counts, dim=0).to(torch.int32)  # [E]
    return ExpertPermutation(sorted_pair, sorted_pair // K, counts, offsets)


@dataclass
class BlockSchedule:
    """Which expert and which sorted rows each M-block of a grouped GEMM covers.

    Sized by the upper bound ceil(T·K / BLOCK_M) + E tiles so the grid is known without a host sync; tiles
    past the real count have ``tile_expert == -1`` and exit at once.
    """

    tile_expert: Tensor  # [n_tiles] int32  expert of each M-block, -1 for unused tiles
    tile_start: Tensor  # [n_tiles] int32  first sorted row of the block
    expert_end: Tensor  # [E] int32  exclusive end row of each expert (rows past it are masked)
    expert_start: Tensor  # [E] int32  first sorted row of each expert
    block_m: int


def block_schedule(perm: ExpertPermutation, num_pairs: int, block_m: int) -> BlockSchedule:
    """Tile -> (expert, first row) mapping on device: each expert's rows split into ceil(n_e / BLOCK_M) blocks."""
    counts = perm.counts  # [E]
    E = counts.numel()
    ends = perm.offsets.to(torch.int64)  # [E]
    starts = ends - counts  # [E]
    tiles = (counts + block_m - 1) // block_m  # [E]
    tile_end = torch.cumsum(tiles, dim=0)  # [E] exclusive end tile of each expert
    n_tiles = (num_pairs + block_m - 1) // block_m + E  # Σ ceil(n_e/B) <= ceil(ΣN/B) + E
    tile_id = torch.arange(n_tiles, device=counts.device)  # [n_tiles]
    expert = torch.searchsorted(tile_end, tile_id, right=True)  # [n_tiles] in [0, E]; E = unused tile
    valid = expert < E
    e = expert.clamp(max=E - 1)
    first_tile = tile_end[e] - tiles[e]  # [n_tiles]
    start = starts[e] + (tile_id - first_tile) * block_m  # [n_tiles]
    return BlockSchedule(
        tile_expert=torch.where(valid, e, -1).to(torch.int32),
        tile_start=torch.where(valid, start, 0).to(torch.int32),
        expert_end=ends.to(torch.int32),
        expert_start=starts.to(torch.int32),
        block_m=block_m,
    )
