"""Forward+backward cost of one MoE layer: hizoo's MoEFeedForward against transformers' OlmoeSparseMoeBlock
(its ``eager`` and ``grouped_mm`` experts implementations) and against the dense-GEMM bound, in one run.

    python bench/moe_layer.py --tokens 2048 --hidden 512 --experts 32 --top-k 4 --expert-width 256 --repeats 5

Every variant is router (softmax top-K, OLMoE) + SwiGLU experts on the same T tokens, fp32 on CPU.
The dense-GEMM bound runs the same FLOPs as six plain matmuls: forward X·W13 [T·K, d]x[d, 2f] and H·W2
[T·K, f]x[f, d], and the two backward GEMMs of each (dX, dW); no routing, gather, activation or scatter.
Time: median of ``--repeats`` steps per variant, the variants interleaved round-robin so a noisy (shared)
machine slows them alike. Memory: bytes of the distinct tensors autograd saves for backward (activation
memory; parameters and gradients are the same for every variant and excluded).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from hizoo import HizooConfig
from hizoo.models.moe import MoEFeedForward


def hizoo_layer(args, backend: str) -> nn.Module:
    config = HizooConfig(hidden_size=args.hidden, num_attention_heads=8, ffn="moe", router="topk",
                         num_experts=args.experts, num_experts_per_tok=args.top_k,
                         moe_intermediate_size=args.expert_width, experts_backend=backend)
    layer = MoEFeedForward(config)
    for p in layer.parameters():
        nn.init.normal_(p, std=0.02)
    return layer


def olmoe_layer(args, implementation: str) -> nn.Module:
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    config = OlmoeConfig(hidden_size=args.hidden, intermediate_size=args.expert_width, num_experts=args.experts,
                         num_experts_per_tok=args.top_k)
    config._experts_implementation = implementation
    layer = OlmoeSparseMoeBlock(config)
    for p in layer.parameters():
        nn.init.normal_(p, std=0.02)
    return layer


def layer_step(layer: nn.Module, h: torch.Tensor, grad: torch.Tensor) -> None:
    out = layer(h)
    if isinstance(out, tuple):  # hizoo: (out, RoutingResult); the aux losses join the backward
        out, routing = out
        (out * grad).sum().add(routing.aux_loss).backward()
    else:
        out.backward(grad)


class DenseBound:
    """The expert GEMMs alone: 2 forward + 4 backward plain matmuls with the FLOPs of the routed experts."""

    def __init__(self, args):
        rows, d, f = args.tokens * args.top_k, args.hidden, args.expert_width
        self.x, self.w13, self.dg = torch.randn(rows, d), torch.randn(d, 2 * f), torch.randn(rows, 2 * f)
        self.h, self.w2, self.dy = torch.randn(rows, f), torch.randn(f, d), torch.randn(rows, d)

    def __call__(self) -> None:
        self.x @ self.w13  # forward GEMM 1
        self.h @ self.w2  # forward GEMM 2
        self.dy @ self.w2.T  # dH
        self.h.T @ self.dy  # dW2
        self.dg @ self.w13.T  # dX
        self.x.T @ self.dg  # dW13


def saved_activation_bytes(layer: nn.Module, h: torch.Tensor, grad: torch.Tensor) -> int:
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer_step(layer, h, grad)
    return sum(storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--expert-width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)

    h = torch.randn(1, args.tokens, args.hidden, requires_grad=True)
    grad = torch.randn(1, args.tokens, args.hidden)
    layers = {
        "hizoo grouped_mm": hizoo_layer(args, "grouped_mm"),
        "hizoo eager": hizoo_layer(args, "eager"),
        "HF OLMoE grouped_mm": olmoe_layer(args, "grouped_mm"),
        "HF OLMoE eager": olmoe_layer(args, "eager"),
    }
    runs = {name: (lambda layer=layer: layer_step(layer, h, grad)) for name, layer in layers.items()}
    runs["dense-GEMM bound"] = DenseBound(args)

    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.repeats):
        for name, run in runs.items():
            for layer in layers.values():
                layer.zero_grad(set_to_none=True)
            h.grad = None
            start = time.perf_counter()
            run()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    bound = statistics.median(times["dense-GEMM bound"])
    hf_mem = saved_activation_bytes(layers["HF OLMoE grouped_mm"], h, grad)
    print(f"T={args.tokens} d={args.hidden} E={args.experts} K={args.top_k} f={args.expert_width} fp32 CPU, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'variant':<22}{'fwd+bwd ms':>12}{'x bound':>9}{'saved MiB':>11}{'x HF gmm mem':>14}")
    for name, ts in times.items():
        t = statistics.median(ts)
        mem = saved_activation_bytes(layers[name], h, grad) if name in layers else 0
        mem_cols = f"{mem / 2**20:>11.1f}{mem / hf_mem:>14.2f}" if name in layers else f"{'-':>11}{'-':>14}"
        print(f"{name:<22}{t * 1e3:>12.1f}{t / bound:>9.2f}{mem_cols}")


if __name__ == "__main__":
    main()
