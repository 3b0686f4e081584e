"""Triton experts equal the eager reference forward and backward.

CPU: the kernels run under TRITON_INTERPRET=1 in a subprocess (the variable is read when Triton decorates the
kernels, and other test modules may already have imported triton in this process). CUDA: the same checks at
real shapes in bf16/fp16/fp32 with per-dtype tolerances.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hizoo.kernels.eager import eager_experts

HELPER = Path(__file__).with_name("triton_interpret_check.py")


@pytest.mark.slow  # Triton's interpreter in a subprocess
def test_triton_experts_match_eager_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(HELPER)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("random", "single_token", "k1", "uneven"):
        assert f"ok {name}" in proc.stdout, proc.stdout


def test_interpreter_helper_refuses_to_run_compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(HELPER)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "TRITON_INTERPRET=1" in proc.stderr


# tolerances relative to the output scale; bf16 has 8 mantissa bits, fp16 11
GPU_TOL = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 4e-2}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled Triton kernels need CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("T,d,f,E,K", [(4096, 1024, 512, 64, 8), (1, 256, 128, 16, 2), (999, 512, 384, 32, 1)])
def test_triton_experts_match_eager_on_gpu(dtype, T, d, f, E, K):
    from hizoo.kernels.triton_experts import triton_experts

    torch.manual_seed(0)
    dev = "cuda"
    x = torch.randn(T, d, device=dev, dtype=dtype)
    w13 = (torch.randn(E, d, 2 * f, device=dev) * d**-0.5).to(dtype)
    w2 = (torch.randn(E, f, d, device=dev) * f**-0.5).to(dtype)
    idx = torch.rand(T, E, device=dev).topk(K, dim=-1).indices
    idx[idx == E - 1] = 0  # last expert empty
    wt = torch.rand(T, K, device=dev).to(dtype)
    grad_out = torch.randn(T, d, device=dev, dtype=dtype)

    def run(fn, x, w13, w2, wt):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w13, w2, wt)]
        out = fn(leaves[0], leaves[1], leaves[2], idx, leaves[3])
        out.backward(grad_out)
        return [out] + [t.grad for t in leaves]

    ref = run(eager_experts, *(t.double() for t in (x, w13, w2, wt)))
    got = run(triton_experts, x, w13, w2, wt)
    for name, g, r in zip(("out", "dx", "dw13", "dw2", "dweight"), got, ref):
        assert g.dtype == dtype
        err = (g.double() - r).abs().max().item()
        scale = r.abs().max().item() + 1e-6
        assert err <= GPU_TOL[dtype] * scale, f"{name}: max err {err:.3g} vs scale {scale:.3g}"
