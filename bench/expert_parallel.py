"""Expert parallelism on CPU: training-step time and bytes moved per token, EP=1 against EP=2, in one run.

    python bench/expert_parallel.py                        # configs/ep_cpu.yaml's model, 2 processes
    python bench/expert_parallel.py --hidden 256 --layers 4 --experts 32 --top-k 8 --steps 12

Two processes over gloo (spawned here, one thread each), each training on its own batch: data parallelism
under DDP, as Lightning's ``ddp`` runs it. Both layouts are built in the same processes from the same weights
and stepped alternately (round-robin, so a noisy machine slows them alike):

- EP=1: every rank holds all E experts; DDP all-reduces every gradient, experts included.
- EP=2: each rank holds E/2 experts; (token, expert) pairs go to the rank holding the expert and back by
  all-to-all (``kernels/expert_parallel.py``); DDP all-reduces the replicated parameters only.

Bytes moved, per rank and per token it trains on: the all-to-all rows sent to the other rank (measured by
wrapping ``dist.all_to_all_single``; forward dispatch + combine and their reverse in backward, plus the E
per-expert counts), against the uniform-routing expectation 4·L·K·d·bytes·(N−1)/N; and the gradient all-reduce
(a ring all-reduce sends 2·(W−1)/W of the gradient bytes per rank), from the sizes DDP reduces. Time: median
step (forward, backward, expert-gradient reduction, AdamW), and the shares of it spent waiting for the other
rank at an all-to-all (a barrier before each: load imbalance and machine noise) and in the exchange itself.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class AllToAllMeter:
    """Wraps ``dist.all_to_all_single``: bytes this rank sends to other ranks, seconds spent waiting for the
    other ranks to arrive (a barrier first: skew and machine noise) and seconds of the exchange itself."""

    def __init__(self):
        self.bytes, self.wait, self.seconds = 0, 0.0, 0.0
        self._inner = dist.all_to_all_single
        dist.all_to_all_single = self

    def __call__(self, output, input, output_split_sizes=None, input_split_sizes=None, group=None, **kwargs):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        row_bytes = input[0].numel() * input.element_size() if input.shape[0] else 0
        if input_split_sizes is None:  # equal splits (the per-expert counts)
            sent = input.numel() * input.element_size() * (world - 1) // world
        else:
            sent = sum(n for j, n in enumerate(input_split_sizes) if j != rank) * row_bytes
        start = time.perf_counter()
        dist.barrier(group=group)
        arrived = time.perf_counter()
        result = self._inner(output, input, output_split_sizes, input_split_sizes, group=group, **kwargs)
        self.wait += arrived - start
        self.seconds += time.perf_counter() - arrived
        self.bytes += sent
        return result


def build(args, ep_size: int, seed_model):
    from torch.nn.parallel import DistributedDataParallel

    from hizoo.models.expert_parallel import ExpertParallel

    model = copy.deepcopy(seed_model)
    ep = ExpertParallel(model, ep_size) if ep_size > 1 else None
    ignored = [name for name, _ in ep.named_parameters()] if ep is not None else []
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reduced = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n not in ignored)
    return dict(model=model, ddp=ddp, ep=ep, optimizer=optimizer, reduced_bytes=reduced,
                params=sum(p.numel() for p in model.parameters()), times=[], a2a_bytes=[], a2a_seconds=[],
                a2a_wait=[])


def step(run, ids, meter: AllToAllMeter) -> None:
    meter.bytes, meter.wait, meter.seconds = 0, 0.0, 0.0
    start = time.perf_counter()
    out = run["ddp"](ids, labels=ids)
    out.loss.backward()
    if run["ep"] is not None:
        run["ep"].reduce_gradients()
    run["optimizer"].step()
    run["optimizer"].zero_grad(set_to_none=True)
    run["times"].append(time.perf_counter() - start)
    run["a2a_bytes"].append(meter.bytes)
    run["a2a_seconds"].append(meter.seconds)
    run["a2a_wait"].append(meter.wait)


def worker(rank: int, world: int, port: int, args, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from hizoo import HizooConfig, HizooForCausalLM

    config = HizooConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, intermediate_size=3 * args.hidden, ffn="moe",
                         router="topk", num_experts=args.experts, num_experts_per_tok=args.top_k,
                         moe_intermediate_size=args.expert_width, experts_backend="grouped_mm")
    torch.manual_seed(0)
    seed_model = HizooForCausalLM(config)
    runs = {1: build(args, 1, seed_model), 2: build(args, world, seed_model)}
    meter = AllToAllMeter()
    g = torch.Generator().manual_seed(100 + rank)
    for i in range(args.warmup + args.steps):
        ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=g)
        for run in runs.values():  # round-robin: both layouts see the same machine load
            step(run, ids, meter)
    tokens = args.batch * args.seq_len
    summary = {}
    for ep_size, run in runs.items():
        keep = slice(args.warmup, None)
        summary[ep_size] = dict(
            step_ms=1e3 * statistics.median(run["times"][keep]),
            a2a_share=statistics.median(s / t for s, t in zip(run["a2a_seconds"][keep], run["times"][keep])),
            wait_share=statistics.median(s / t for s, t in zip(run["a2a_wait"][keep], run["times"][keep])),
            a2a_bytes_per_token=statistics.mean(run["a2a_bytes"][keep]) / tokens,
            allreduce_bytes_per_token=2 * (world - 1) / world * run["reduced_bytes"] / tokens,
            params=run["params"])
    results[rank] = summary
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--expert-width", type=int, default=96)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="sequences per rank")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    world = 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(worker, args=(world, port, args, results), nprocs=world)

    d, L, K = args.hidden, args.layers, args.top_k
    expected = 4 * L * K * d * 4 * (world - 1) / world  # fp32 rows, uniform routing
    print(f"\n{world} CPU processes (gloo, {args.threads} thread each), {L} MoE layers, d={d}, E={args.experts}, "
          f"K={K}, f={args.expert_width}, vocab {args.vocab}, {args.batch}x{args.seq_len} tokens per rank, fp32, "
          f"median of {args.steps} steps\n")
    print("| layout | step ms (rank 0 / 1) | vs EP=1 | waiting / exchanging | all-to-all B/token | uniform-routing "
          "estimate | grad all-reduce B/token | params per rank |")
    print("|---|---|---|---|---|---|---|---|")
    base = max(results[r][1]["step_ms"] for r in range(world))
    for ep_size in (1, 2):
        rows = [results[r][ep_size] for r in range(world)]
        slowest = max(row["step_ms"] for row in rows)
        a2a = statistics.mean(row["a2a_bytes_per_token"] for row in rows)
        estimate = f"{expected:,.0f}" if ep_size > 1 else "0"
        print(f"| EP={ep_size} | {rows[0]['step_ms']:.0f} / {rows[1]['step_ms']:.0f} | {slowest / base:.2f} | "
              f"{100 * statistics.mean(row['wait_share'] for row in rows):.0f}% / "
              f"{100 * statistics.mean(row['a2a_share'] for row in rows):.0f}% | {a2a:,.0f} | {estimate} | "
              f"{rows[0]['allreduce_bytes_per_token']:,.0f} | {rows[0]['params']:,} |")


if __name__ == "__main__":
    main()
