"""kernels/permute.py: the pair order, counts and offsets of ``permute_by_expert`` against a Python sort and count,
and every M-block of ``block_schedule`` against tiles built by a loop over the experts."""

import pytest
import torch

from hizoo.kernels.permute import block_schedule, permute_by_expert


def _expert_idx(T: int, K: int, E: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])  # [T, K], distinct per token


@pytest.mark.parametrize("T, K, E", [(1, 1, 1), (9, 2, 4), (33, 3, 8), (0, 2, 3)])
def test_permute_by_expert_matches_a_stable_python_sort(T, K, E):
    idx = _expert_idx(T, K, E, seed=T) if T else torch.zeros(0, K, dtype=torch.long)
    perm = permute_by_expert(idx, E)
    pairs = [(int(e), t * K + k) for t in range(T) for k, e in enumerate(idx[t])]
    order = [p for _, p in sorted(pairs, key=lambda pair: pair[0])]  # Python's sort is stable: pair order kept
    assert perm.sorted_pair.tolist() == order
    assert perm.sorted_token.tolist() == [p // K for p in order]
    counts = [sum(1 for e, _ in pairs if e == expert) for expert in range(E)]
    assert perm.counts.tolist() == counts and perm.counts.dtype == torch.int64
    assert perm.offsets.tolist() == [sum(counts[: e + 1]) for e in range(E)] and perm.offsets.dtype == torch.int32


def test_an_expert_without_pairs_gets_an_empty_range():
    idx = torch.tensor([[2], [0], [2], [2]])
    perm = permute_by_expert(idx, 4)
    assert perm.counts.tolist() == [1, 0, 3, 0] and perm.offsets.tolist() == [1, 1, 4, 4]
    assert perm.sorted_token.tolist() == [1, 0, 2, 3]


@pytest.mark.parametrize("T, K, E, block_m", [(9, 2, 4, 2), (33, 3, 8, 4), (5, 1, 6, 16), (40, 2, 3, 7)])
def test_block_schedule_covers_each_experts_rows_in_blocks(T, K, E, block_m):
    perm = permute_by_expert(_expert_idx(T, K, E, seed=block_m), E)
    sched = block_schedule(perm, T * K, block_m)
    expected, start = [], 0  # (expert, first row) of each block: ceil(n_e / BLOCK_M) blocks per expert, in order
    for e, n in enumerate(perm.counts.tolist()):
        expected += [(e, start + b * block_m) for b in range(-(-n // block_m))]
        start += n
    n_tiles = -(-(T * K) // block_m) + E  # the bound the grid is sized by
    assert sched.tile_expert.numel() == n_tiles >= len(expected)
    used = sched.tile_expert >= 0
    assert list(zip(sched.tile_expert[used].tolist(), sched.tile_start[used].tolist())) == expected
    assert used[: len(expected)].all() and not used[len(expected):].any()  # the unused tiles come last
    assert (sched.tile_start[~used] == 0).all()
    assert sched.expert_end.tolist() == perm.offsets.tolist()
    assert sched.expert_start.tolist() == (perm.offsets.long() - perm.counts).tolist()
    assert sched.block_m == block_m
