"""Forward+backward throughput of the expert kernels: Triton vs torch grouped_mm vs the eager loop vs
transformers' OlmoeSparseMoeBlock (its ``grouped_mm`` and ``eager`` experts implementations), same shapes,
same run.

    python bench/moe_kernels.py                     # CUDA: OLMoE-like and fine-grained layers, bf16, T in {4096, 16384}
    python bench/moe_kernels.py --peak-tflops 989   # bf16 dense peak used for "% of peak" (H100 SXM default)

hizoo backends run the experts alone on fixed routing (softmax top-K of random logits); the OLMoE block also
runs its router (a [T, d]x[d, E] GEMM, <1% of the expert FLOPs at these shapes). FLOPs counted: the expert
GEMMs only, 6·T·K·d·f forward and twice that backward (dX and dW) = 18·T·K·d·f per step.
Without CUDA it says so and runs a tiny fp32 grouped_mm vs eager comparison on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from hizoo.kernels.eager import eager_experts
from hizoo.kernels.grouped_mm import grouped_mm_experts

SHAPES = {"olmoe": dict(d=2048, E=64, K=8, f=1024), "fine-grained": dict(d=2048, E=128, K=8, f=768)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(step, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def experts_step(fn, x, w13, w2, idx, wt, grad):
    leaves = [t.detach().requires_grad_() for t in (x, w13, w2, wt)]

    def step():
        for t in leaves:
            t.grad = None
        fn(leaves[0], leaves[1], leaves[2], idx, leaves[3]).backward(grad)

    return step


def olmoe_step(impl: str, d: int, E: int, K: int, f: int, x, grad):
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    config = OlmoeConfig(hidden_size=d, intermediate_size=f, num_experts=E, num_experts_per_tok=K)
    config._experts_implementation = impl
    layer = OlmoeSparseMoeBlock(config).to(device=x.device, dtype=x.dtype)
    for p in layer.parameters():
        nn.init.normal_(p, std=0.02)
    h = x.detach().view(1, *x.shape).requires_grad_()

    def step():
        layer.zero_grad(set_to_none=True)
        out = layer(h)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(grad.view_as(out))

    return step


def bench_shape(name, d, E, K, f, T, dtype, device, args):
    torch.manual_seed(0)
    x = torch.randn(T, d, device=device, dtype=dtype)
    w13 = (torch.randn(E, d, 2 * f, device=device) * d**-0.5).to(dtype)
    w2 = (torch.randn(E, f, d, device=device) * f**-0.5).to(dtype)
    wt, idx = torch.randn(T, E, device=device).softmax(-1).topk(K, dim=-1)
    wt = wt.to(dtype)
    grad = torch.randn(T, d, device=device, dtype=dtype)
    variants = {}
    if device == "cuda":
        from hizoo.kernels.triton_experts import triton_experts

        variants["triton"] = experts_step(triton_experts, x, w13, w2, idx, wt, grad)
    variants["grouped_mm"] = experts_step(grouped_mm_experts, x, w13, w2, idx, wt, grad)
    if not args.skip_eager:
        variants["eager"] = experts_step(eager_experts, x, w13, w2, idx, wt, grad)
    if not args.skip_olmoe:
        for impl in ("grouped_mm", "eager"):
            try:
                variants[f"olmoe_{impl}"] = olmoe_step(impl, d, E, K, f, x, grad)
            except Exception as err:  # an older transformers without experts implementations
                print(f"  olmoe_{impl}: skipped ({type(err).__name__}: {err})")
    flops = 18 * T * K * d * f
    results = {k: time_step(step, device, args.warmup, args.repeats) for k, step in variants.items()}
    base = results.get("triton", results["grouped_mm"])
    print(f"\n{name}: d={d} E={E} K={K} f={f} T={T} {str(dtype).removeprefix('torch.')}")
    print(f"  {'variant':<18}{'ms':>9}{'TFLOPS':>9}{'% peak':>8}{'tok/s':>12}{'time ratio':>12}")
    for k, t in results.items():
        tflops = flops / t / 1e12
        print(f"  {k:<18}{t * 1e3:>9.2f}{tflops:>9.1f}{100 * tflops / args.peak_tflops:>7.1f}%"
              f"{T / t:>12.0f}{t / base:>11.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak, TFLOPS (H100 SXM: 989)")
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--skip-eager", action="store_true")
    p.add_argument("--skip-olmoe", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device: the Triton backend and the bf16 figures need a GPU. "
              "Running a tiny fp32 grouped_mm vs eager comparison on CPU instead.")
        args.warmup, args.repeats = 1, 3
        bench_shape("tiny (CPU)", 256, 8, 2, 128, 512, torch.float32, "cpu", args)
        return
    print(f"device: {torch.cuda.get_device_name()}  peak for %: {args.peak_tflops} TFLOPS")
    print("'time ratio' = time / time of triton (grouped_mm without CUDA); above 1 is slower")
    for name in args.shapes:
        for T in args.tokens:
            bench_shape(name, **SHAPES[name], T=T, dtype=torch.bfloat16, device="cuda", args=args)


if __name__ == "__main__":
    main()
