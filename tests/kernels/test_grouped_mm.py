"""grouped_mm experts equal the eager reference, forward and backward, in fp32 and bf16."""

import pytest
import torch

from hizoo.kernels import GroupedExperts
from hizoo.kernels.eager import eager_experts
from hizoo.kernels.grouped_mm import grouped_mm_experts

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def run(fn, x, w13, w2, idx, wt):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w13, w2, wt)]
    out = fn(leaves[0], leaves[1], leaves[2], idx, leaves[3])
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d,f", [(16, 8), (8, 6), (6, 8)])  # (8, 6), (6, 8): rows not 16-byte aligned -> padded
def test_grouped_mm_matches_eager_forward_and_backward(dtype, d, f):
    torch.manual_seed(0)
    E, T, K = 5, 12, 2
    x = torch.randn(T, d).to(dtype)
    w13 = (torch.randn(E, d, 2 * f) * 0.3).to(dtype)
    w2 = (torch.randn(E, f, d) * 0.3).to(dtype)
    idx = torch.randint(0, 3, (T, K))  # experts 3 and 4 get no tokens
    idx[:, 1] = (idx[:, 0] + 1) % 3
    wt = torch.rand(T, K).to(dtype)
    ref, ref_grads = run(eager_experts, x, w13, w2, idx, wt)
    out, grads = run(grouped_mm_experts, x, w13, w2, idx, wt)
    assert out.dtype == dtype and out.shape == (T, d)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    for name, g, r in zip(("x", "w13", "w2", "weight"), grads, ref_grads):
        torch.testing.assert_close(g, r, **TOL[dtype], msg=lambda m, n=name: f"grad {n}: {m}")
    assert grads[1][3:].abs().sum() == 0 and grads[2][3:].abs().sum() == 0  # empty experts get zero grads


def test_grouped_experts_module_backends_agree():
    torch.manual_seed(0)
    a = GroupedExperts(4, 8, 6, backend="eager")
    b = GroupedExperts(4, 8, 6, backend="grouped_mm")
    torch.nn.init.normal_(a.w13, std=0.2)
    torch.nn.init.normal_(a.w2, std=0.2)
    b.load_state_dict(a.state_dict())
    x, idx, wt = torch.randn(7, 8), torch.randint(0, 4, (7, 2)), torch.rand(7, 2)
    torch.testing.assert_close(b(x, idx, wt), a(x, idx, wt), atol=1e-5, rtol=1e-5)
