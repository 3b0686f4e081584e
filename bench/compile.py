"""What ``torch.compile`` buys for one training step (forward + backward + AdamW) of the quickstart model.

    python bench/compile.py                       # the quickstart model (configs/quickstart.yaml), batch 8x128
    python bench/compile.py --config configs/mhc.yaml --batch 4 --seq 256 --steps 10

The same model (same weights) is trained eagerly and under ``torch.compile(model)`` (inductor), fp32 on CPU,
on the same batches. The compiled model's first forward + backward pays for compilation; it is reported separately
and the step times are medians over ``--steps`` steps after ``--warmup`` steps, the two variants interleaved
step by step so that a noisy (shared) machine slows them alike. Before timing, the first step's loss and
gradients of both are compared (they must agree to fp32 rounding). Graph breaks: ``torch._dynamo.explain``
counts the graphs the forward is split into; the README lists where and why.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import yaml

from hizoo import HizooConfig, HizooForCausalLM

ROOT = Path(__file__).resolve().parents[1]


def quickstart_fields(config_path: Path, vocab_size: int) -> dict:
    """The ``model.model_config`` of a training config, with the data's vocabulary size."""
    with open(config_path) as f:
        fields = dict(yaml.safe_load(f)["model"]["model_config"])
    fields["vocab_size"] = vocab_size
    return fields


def train_step(model, optimizer, ids) -> torch.Tensor:
    out = model(ids, labels=ids)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary size (the quickstart tokenizer's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (compiling) one")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = 64

    fields = quickstart_fields(args.config, args.vocab)
    torch.manual_seed(0)
    eager = HizooForCausalLM(HizooConfig(**fields)).train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    optimizers = {
        "eager": torch.optim.AdamW(eager.parameters(), lr=1e-3),
        "compiled": torch.optim.AdamW(compiled_model.parameters(), lr=1e-3),
    }
    models = {"eager": eager, "compiled": compiled}
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g) for _ in range(4)]

    # Correctness first: the first step's loss and gradients agree.
    losses, first_s = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        out = model(batches[0], labels=batches[0])
        out.loss.backward()
        first_s[name] = time.perf_counter() - start  # compiled: compiles the forward and the backward
        losses[name] = out.loss.item()
    grad_diff = max((a.grad - b.grad).abs().max().item()
                    for a, b in zip(eager.parameters(), compiled_model.parameters()) if a.grad is not None)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    print(f"first-step loss eager {losses['eager']:.6f} compiled {losses['compiled']:.6f}; max grad diff {grad_diff:.2e}")

    for name, model in models.items():  # one full step each (the optimizer's first step allocates its state)
        train_step(model, optimizers[name], batches[1])

    times = {name: [] for name in models}
    for step in range(args.warmup + args.steps):
        ids = batches[step % len(batches)]
        for name, model in models.items():
            t0 = time.perf_counter()
            train_step(model, optimizers[name], ids)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    eager_ms = statistics.median(times["eager"]) * 1e3
    compiled_ms = statistics.median(times["compiled"]) * 1e3
    tokens = args.batch * args.seq
    print(f"model: {args.config.name}, {sum(p.numel() for p in eager.parameters()) / 1e6:.2f}M parameters, "
          f"batch {args.batch}x{args.seq}, fp32, CPU ({args.threads} threads), median of {args.steps} steps")
    print("| variant | step ms | tokens/s | vs eager |")
    print("|---|---|---|---|")
    print(f"| eager | {eager_ms:.1f} | {tokens / eager_ms * 1e3:.0f} | 1.00 |")
    print(f"| torch.compile | {compiled_ms:.1f} | {tokens / compiled_ms * 1e3:.0f} | {eager_ms / compiled_ms:.2f}x |")
    print(f"first forward + backward: eager {first_s['eager']:.1f} s, compiled {first_s['compiled']:.1f} s (compilation)")

    # Last: explain resets dynamo's caches.
    explain = torch._dynamo.explain(copy.deepcopy(eager))(batches[0], labels=batches[0])
    print(f"forward graphs: {explain.graph_count} ({explain.graph_break_count} graph breaks):")
    reasons = {}
    for brk in explain.break_reasons:
        frame = brk.user_stack[-1] if brk.user_stack else None
        where = f"{Path(frame.filename).name}:{frame.lineno} {frame.name}" if frame else "?"
        key = (where, brk.reason.splitlines()[0][:90])
        reasons[key] = reasons.get(key, 0) + 1
    for (where, reason), count in sorted(reasons.items()):
        print(f"  {count} x {where}: {reason}")


if __name__ == "__main__":
    main()
