"""Run by test_triton_experts.py in a subprocess with TRITON_INTERPRET=1 (Triton reads it at @triton.jit time,
so it must be set before any import of triton in the process). Checks the Triton experts forward and every
gradient against the eager reference; prints one line per case and exits non-zero on the first mismatch."""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

from hizoo.kernels.eager import eager_experts  # noqa: E402
from hizoo.kernels.triton_experts import triton_experts  # noqa: E402


def run(fn, x, w13, w2, idx, wt):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w13, w2, wt)]
    out = fn(leaves[0], leaves[1], leaves[2], idx, leaves[3])
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out] + [t.grad for t in leaves]


def case(name, T, d, f, E, K, idx):
    torch.manual_seed(0)
    x = torch.randn(T, d)
    w13 = torch.randn(E, d, 2 * f) * 0.3
    w2 = torch.randn(E, f, d) * 0.3
    wt = torch.rand(T, K)
    got, ref = run(triton_experts, x, w13, w2, idx, wt), run(eager_experts, x, w13, w2, idx, wt)
    for what, g, r in zip(("out", "dx", "dw13", "dw2", "dweight"), got, ref):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4, msg=lambda m, n=f"{name} {what}": f"{n}: {m}")
    used = torch.zeros(E, dtype=torch.bool)
    used[idx.flatten()] = True
    assert got[2][~used].abs().sum() == 0 and got[3][~used].abs().sum() == 0, f"{name}: empty experts got grads"
    print(f"ok {name}")


g = torch.Generator().manual_seed(1)
E = 6
# random loads, experts 4 and 5 empty; T·K = 74 is not a multiple of the 16-row block
case("random", 37, 24, 20, E, 2, torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(37)]))
case("single_token", 1, 16, 8, E, 3, torch.tensor([[5, 0, 2]]))
case("k1", 19, 16, 12, E, 1, torch.randint(0, E, (19, 1), generator=g))
uneven = torch.stack([torch.tensor([0, 1 + (t % 7 == 0) * 2]) for t in range(40)])  # expert 0: 40 rows, 3: 6
case("uneven", 40, 20, 16, E, 2, uneven)
sys.exit(0)
