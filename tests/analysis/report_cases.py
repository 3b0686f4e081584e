"""Tiny seeded models whose diagnostics reports are pinned in data/report_baseline.json (recorded from the
code before the report became dataclasses): the values, the JSON key structure, the TensorBoard tags and the
study's per-run metrics must stay what they were."""

import torch

from hizoo import HizooConfig, HizooForCausalLM

BASE = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            moe_intermediate_size=8, experts_backend="eager")
CASES = {
    "himoe_mhc_lss_domains": dict(ffn="moe", num_experts=4, num_experts_per_tok=2, n_groups=2, router="himoe",
                                  residual="mhc", n_streams=2, stream_init="lss"),
    "topk_capacity_hc": dict(ffn="moe", num_experts=4, num_experts_per_tok=2, router="topk", capacity_factor=0.5,
                             residual="hc", n_streams=3),
    "group_limited_plain": dict(ffn="moe", num_experts=8, num_experts_per_tok=2, n_groups=4,
                                router="group_limited", topk_groups=2),
    "dense_mhc_lite": dict(ffn="dense", residual="mhc_lite", n_streams=3),
    "dense_plain": dict(ffn="dense"),
}


def case_inputs(name: str):
    """-> (model in eval mode, input_ids [3, 10], domain_ids [3, 10] or None, domain names or None)."""
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**BASE, **CASES[name])).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 48, (3, 10), generator=g)
    if name.endswith("domains"):
        domain_ids = torch.tensor([0, 1, 0]).view(3, 1).expand(3, 10)
        return model, ids, domain_ids, ["lib", "docs"]
    return model, ids, None, None
