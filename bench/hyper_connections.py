"""Training-step cost of hyper-connections: hizoo's HC / mHC against the plain residual and the
``hyper-connections`` package (PyPI), all inside the same HizooForCausalLM, measured in one run.

    python bench/hyper_connections.py --repeats 5 --batch 4 --seq 256

Model: d=256, 4 layers, 4 heads, SwiGLU 768, vocab 8192, fp32 on CPU; batch 4 × 256 tokens; n=4 streams.
Time: median of ``--repeats`` forward+backward steps per variant, the variants interleaved round-robin so a
noisy machine slows them alike. Memory: bytes of the distinct tensors autograd saves for backward
(activation memory; parameters and gradients are the same for every variant and excluded).

The package variants keep the package's own stream layout ([(B·n), S, d]) and its expand/reduce functions,
so no layout conversion is charged to it: its connection is wrapped in the read/write interface hizoo's
blocks call, and the model's stream reduction is pointed at the package's for those runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
from torch import nn

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models import modeling
from hizoo.models.hyper_connections import connection_index

# This file is named like the package it measures: keep its own folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]

BASE = dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768,
            use_cache=False)
N = 4


class PackageConnection(nn.Module):
    """One ``hyper-connections`` package connection behind hizoo's read/write interface."""

    def __init__(self, hc: nn.Module):
        super().__init__()
        self.hc = hc

    def read(self, streams):  # streams [(B·n), S, d] in the package's layout
        branch_input, add_residual = self.hc(streams)
        return branch_input, {"add_residual": add_residual}

    def write(self, streams, branch_out, ctx):
        return ctx["add_residual"](branch_out)


def package_model(kind: str) -> tuple[HizooForCausalLM, nn.Module]:
    """The plain hizoo model with every residual replaced by the package's HC (``hc``) or mHC (``mhc``)."""
    if kind == "hc":
        from hyper_connections import get_init_and_expand_reduce_stream_functions as get_fns
    else:
        from hyper_connections import mc_get_init_and_expand_reduce_stream_functions as get_fns
    init_hc, expand, reduce = get_fns(N, dim=BASE["hidden_size"])
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**BASE))
    for i, block in enumerate(model.model.layers):
        block.attn_conn = PackageConnection(init_hc(layer_index=connection_index(i, "attn")))
        block.ffn_conn = PackageConnection(init_hc(layer_index=connection_index(i, "ffn")))
    model.model.expand = expand
    return model, reduce


def hizoo_model(**overrides) -> tuple[HizooForCausalLM, None]:
    torch.manual_seed(0)
    return HizooForCausalLM(HizooConfig(**BASE, **overrides)), None


@contextlib.contextmanager
def stream_reduction(reduce):
    """Point the model's stream reduction at the package's for package variants (in hizoo's default order: the
    final norm on every stream of the package's [(B·n), S, d] layout, then the package's sum over streams)."""
    if reduce is None:
        yield
        return
    original = modeling.reduce_streams
    modeling.reduce_streams = lambda streams, norm, how: reduce(norm(streams))
    try:
        yield
    finally:
        modeling.reduce_streams = original


def step(model, ids) -> None:
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()


def saved_activation_bytes(model, ids) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in storages and not isinstance(t, nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(model, ids)
    return sum(b for ptr, b in storages.items() if ptr not in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-package", action="store_true", help="skip the hyper-connections package")
    args = parser.parse_args()

    variants = {
        "none": lambda: hizoo_model(),
        "hc static": lambda: hizoo_model(residual="hc", n_streams=N),
        "hc dynamic": lambda: hizoo_model(residual="hc", n_streams=N, hc_dynamic=True),
        "mhc": lambda: hizoo_model(residual="mhc", n_streams=N),
        "mhc recompute": lambda: hizoo_model(residual="mhc", n_streams=N, hc_recompute=True),
    }
    if not args.no_package:
        try:
            import hyper_connections  # noqa: F401
            variants["package hc"] = lambda: package_model("hc")
            variants["package mhc"] = lambda: package_model("mhc")
        except ImportError:
            print("hyper-connections is not installed (pip install hyper-connections): package variants skipped")

    ids = torch.randint(0, BASE["vocab_size"], (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    models = {name: build() for name, build in variants.items()}
    for model, _ in models.values():
        model.train()
    memory = {}
    for name, (model, reduce) in models.items():
        with stream_reduction(reduce):
            step(model, ids)  # warm-up
            memory[name] = saved_activation_bytes(model, ids)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, (model, reduce) in models.items():
            with stream_reduction(reduce):
                start = time.perf_counter()
                step(model, ids)
                times[name].append(time.perf_counter() - start)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d={BASE['hidden_size']}, "
          f"{BASE['num_hidden_layers']} layers, batch {args.batch}x{args.seq}, n={N}, fp32 CPU, "
          f"median of {args.repeats} fwd+bwd steps")
    base_t, base_m = statistics.median(times["none"]), memory["none"]
    print(f"{'variant':<15}{'step ms':>9}{'x none':>8}{'saved MiB':>11}{'x none':>8}")
    for name in models:
        t = statistics.median(times[name])
        print(f"{name:<15}{t * 1e3:>9.1f}{t / base_t:>8.2f}{memory[name] / 2**20:>11.1f}{memory[name] / base_m:>8.2f}")
    for ours, theirs in (("hc dynamic", "package hc"), ("mhc", "package mhc")):
        if theirs in times:
            ratio = statistics.median(times[theirs]) / statistics.median(times[ours])
            print(f"{theirs} / hizoo {ours}: {ratio:.2f}x step time")


if __name__ == "__main__":
    main()
