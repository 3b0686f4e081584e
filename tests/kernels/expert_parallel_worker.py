"""Run by test_expert_parallel.py as 2 processes over gloo (torchrun-style environment: RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT). Checks the all-to-all and the expert-parallel experts against the eager reference on
the full expert weights; prints ``ok NAME`` per check and exits non-zero at the first mismatch."""

import sys

import torch
import torch.distributed as dist

from hizoo.kernels import GroupedExperts
from hizoo.kernels.eager import eager_experts
from hizoo.kernels.expert_parallel import all_to_all
from hizoo.kernels.experts import gather_experts


def check_all_to_all(rank: int) -> None:
    """Uneven splits, by hand: rank 0 sends [1 row -> 0, 2 rows -> 1], rank 1 sends [3 rows -> 0, 0 -> 1]."""
    x = (torch.arange(3, dtype=torch.float64) + 10 * rank).unsqueeze(1).repeat(1, 2).requires_grad_()  # [3, 2]
    send = [[1, 2], [3, 0]][rank]
    recv = [[1, 3], [2, 0]][rank]
    out = all_to_all(x, recv, send)
    want = {0: [0, 10, 11, 12], 1: [1, 2]}[rank]
    torch.testing.assert_close(out[:, 0], torch.tensor(want, dtype=torch.float64))
    (0.5 * out.square().sum()).backward()  # d/dout = out, so each row's gradient is its own value sent home
    torch.testing.assert_close(x.grad, x.detach())
    print("ok all_to_all", flush=True)


def check_experts(name: str, rank: int, T: int, E: int, K: int, backend: str, expert_idx=None) -> None:
    d, f = 8, 6
    torch.manual_seed(1000 + rank)  # each rank draws its own weights: shard_ must take rank 0's
    experts = GroupedExperts(E, d, f, backend=backend)
    torch.nn.init.normal_(experts.w13, std=0.4)
    torch.nn.init.normal_(experts.w2, std=0.4)
    full_w13, full_w2 = experts.w13.detach().clone(), experts.w2.detach().clone()
    dist.broadcast(full_w13, 0)
    dist.broadcast(full_w2, 0)
    x = torch.randn(T, d)
    if expert_idx is None:
        rows = [torch.randperm(E)[:K] for _ in range(T)]
        expert_idx = torch.stack(rows) if rows else torch.zeros(0, K, dtype=torch.long)
    weight = torch.rand(T, K)
    coef = torch.randn(T, d)  # loss = Σ coef · out

    # reference: all experts local, eager loop; expert gradients summed over the ranks' losses
    ref_leaves = [t.clone().requires_grad_() for t in (x, full_w13, full_w2, weight)]
    ref_out = eager_experts(ref_leaves[0], ref_leaves[1], ref_leaves[2], expert_idx, ref_leaves[3])
    if ref_out.requires_grad:  # the eager loop with no tokens returns a constant
        (coef * ref_out).sum().backward()
    ref_dx = ref_leaves[0].grad if ref_leaves[0].grad is not None else torch.zeros_like(x)
    ref_dweight = ref_leaves[3].grad if ref_leaves[3].grad is not None else torch.zeros_like(weight)
    ref_dw13 = ref_leaves[1].grad if ref_leaves[1].grad is not None else torch.zeros_like(full_w13)
    ref_dw2 = ref_leaves[2].grad if ref_leaves[2].grad is not None else torch.zeros_like(full_w2)
    dist.all_reduce(ref_dw13)
    dist.all_reduce(ref_dw2)

    experts.shard_(dist.group.WORLD)
    E_local = E // dist.get_world_size()
    block = slice(rank * E_local, (rank + 1) * E_local)
    assert experts.w13.shape[0] == E_local and experts.expert_parallel_size == 2
    torch.testing.assert_close(experts.w13.detach(), full_w13[block], atol=0, rtol=0)  # rank 0's draw

    x_ep, weight_ep = x.clone().requires_grad_(), weight.clone().requires_grad_()
    out = experts(x_ep, expert_idx, weight_ep)
    (coef * out).sum().backward()
    torch.testing.assert_close(out, ref_out.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_ep.grad, ref_dx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weight_ep.grad, ref_dweight, atol=1e-5, rtol=1e-5)
    assert experts.w13.grad is not None and experts.w2.grad is not None  # also on a rank that received no rows
    torch.testing.assert_close(experts.w13.grad, ref_dw13[block], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(experts.w2.grad, ref_dw2[block], atol=1e-5, rtol=1e-5)

    # full state in, own block kept; full weights back out
    state = {"w13": full_w13 * 2, "w2": full_w2 * 2}
    experts.load_state_dict(state)
    torch.testing.assert_close(experts.w13.detach(), 2 * full_w13[block], atol=0, rtol=0)
    on_rank0 = gather_experts(experts.w2.detach(), dist.group.WORLD, dst=0)
    assert (on_rank0 is None) == (rank != 0)
    if on_rank0 is not None:
        torch.testing.assert_close(on_rank0, 2 * full_w2, atol=0, rtol=0)
    experts.unshard_()
    assert experts.ep_group is None and experts.w13.shape[0] == E
    torch.testing.assert_close(experts.w13.detach(), 2 * full_w13, atol=0, rtol=0)
    print(f"ok {name}", flush=True)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    check_all_to_all(rank)
    for backend in ("eager", "grouped_mm"):
        check_experts(f"random_{backend}", rank, T=(9, 5)[rank], E=8, K=2, backend=backend)
        check_experts(f"k1_{backend}", rank, T=6, E=4, K=1, backend=backend)
        # every pair goes to rank 1's experts: rank 0 computes nothing and still joins the backward
        skew = torch.tensor([[4, 5], [6, 7], [5, 7]])
        check_experts(f"skewed_{backend}", rank, T=3, E=8, K=2, backend=backend, expert_idx=skew)
        # rank 1 has no tokens at all
        check_experts(f"empty_rank_{backend}", rank, T=(4, 0)[rank], E=8, K=2, backend=backend)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
