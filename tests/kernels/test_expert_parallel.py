"""Expert-parallel dispatch/combine (kernels/expert_parallel.py) and the sharded GroupedExperts: 2 processes
over gloo against the eager reference on the full experts (expert_parallel_worker.py), plus the errors."""

from pathlib import Path

import pytest
import torch

from hizoo.kernels import GroupedExperts

WORKER = Path(__file__).with_name("expert_parallel_worker.py")


@pytest.mark.slow  # starts two processes (gloo)
def test_two_ranks_match_the_eager_reference(launch_ranks):
    """Uneven all-to-all by hand; EP=2 experts = eager on all experts (output, dx, dweight, dw13, dw2 summed
    over the ranks' losses) with eager and grouped_mm, K=1, all pairs on one rank, a rank without tokens."""
    outputs = launch_ranks(WORKER)
    for out in outputs:
        for name in ("all_to_all", "random_eager", "k1_eager", "skewed_eager", "empty_rank_eager",
                     "random_grouped_mm", "k1_grouped_mm", "skewed_grouped_mm", "empty_rank_grouped_mm"):
            assert f"ok {name}\n" in out, out[-3000:]


def test_sharding_needs_an_initialized_process_group():
    experts = GroupedExperts(6, 8, 4)
    with pytest.raises(RuntimeError, match="needs torch.distributed initialized"):
        experts.shard_(None)  # no process group in this process
    assert experts.ep_group is None and experts.expert_parallel_size == 1
    experts.unshard_()  # a no-op when not sharded
    assert experts.w13.shape == (6, 8, 8)


def test_empty_input_stays_on_the_graph():
    """Zero rows still give gradients (zeros) to every input: an expert-parallel rank that receives no rows
    must run the same backward collectives as the others."""
    experts = GroupedExperts(4, 8, 4, backend="eager")
    torch.nn.init.normal_(experts.w13)
    torch.nn.init.normal_(experts.w2)
    x = torch.zeros(0, 8, requires_grad=True)
    out = experts(x, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    assert out.shape == (0, 8) and out.requires_grad
    out.sum().backward()
    assert experts.w13.grad is not None and float(experts.w13.grad.abs().sum()) == 0.0
    assert x.grad is not None
