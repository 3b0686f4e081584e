"""Training step of a whole OLMoE-shaped model: transformers' OlmoeForCausalLM against the same weights
converted into hizoo (``HizooForCausalLM.from_olmoe``), same input, same run.

    python bench/olmoe_model.py --layers 4 --hidden 512 --experts 32 --top-k 4 --expert-width 256 --batch 4 --seq 512

Both models compute CE + router load-balancing loss (OLMoE's ``output_router_logits=True``; the converted
model, like transformers' OLMoE, has no z-loss; the README's timings were taken when it still added one, a
negligible cost) and run forward + backward in fp32 on CPU. OLMoE runs with its
``grouped_mm`` experts implementation and with ``eager``; hizoo with ``grouped_mm``. Before timing, the
script checks that both models give the same logits. Time: median of ``--repeats`` steps, variants
interleaved round-robin so a noisy machine slows them alike; peak RSS is not separated per variant, so
the script reports time only.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import OlmoeConfig, OlmoeForCausalLM

from hizoo import HizooForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--expert-width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.expert_width,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_experts=args.experts,
                         num_experts_per_tok=args.top_k, max_position_embeddings=args.seq, pad_token_id=0,
                         eos_token_id=1)
    variants = {}
    for implementation in ("grouped_mm", "eager"):
        torch.manual_seed(0)
        variant_config = copy.deepcopy(config)  # each model its own config: the implementation is read from it
        variant_config._experts_implementation = implementation
        olmoe = OlmoeForCausalLM(variant_config).train()
        variants[f"OLMoE ({implementation})"] = olmoe
    variants["hizoo (grouped_mm)"] = HizooForCausalLM.from_olmoe(variants["OLMoE (grouped_mm)"],
                                                                 experts_backend="grouped_mm").train()
    ids = torch.randint(0, args.vocab, (args.batch, args.seq))

    with torch.no_grad():
        ref = variants["OLMoE (grouped_mm)"](ids[:1, :64]).logits
        ours = variants["hizoo (grouped_mm)"](ids[:1, :64]).logits
    print(f"max |logit difference| hizoo vs OLMoE: {(ours - ref).abs().max().item():.2e}")

    def step(model) -> None:
        model.zero_grad(set_to_none=True)
        if isinstance(model, OlmoeForCausalLM):
            out = model(ids, labels=ids, output_router_logits=True)
        else:
            out = model(ids, labels=ids)
        out.loss.backward()

    times = {name: [] for name in variants}
    for model in variants.values():  # warm-up
        step(model)
    for _ in range(args.repeats):
        for name, model in variants.items():
            start = time.perf_counter()
            step(model)
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["OLMoE (grouped_mm)"])
    print(f"\nOLMoE-shaped model: {args.layers} layers, d={args.hidden}, E={args.experts}, K={args.top_k}, "
          f"f={args.expert_width}, vocab={args.vocab}, batch {args.batch}x{args.seq}, fp32, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  {'variant':<22}{'step ms':>10}{'vs OLMoE grouped_mm':>22}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:<22}{median * 1e3:>10.1f}{median / base:>21.2f}x")


if __name__ == "__main__":
    main()
