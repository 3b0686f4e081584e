"""The tiny model and micro-batches of the training-batch metric tests (also imported by the 2-process worker)."""

import torch

from hizoo import HizooConfig, HizooForCausalLM

CONFIG = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              ffn="moe", num_experts=8, num_experts_per_tok=2, n_groups=4, router="group_limited", topk_groups=2,
              router_bias_update_rate=0.0, moe_intermediate_size=8,  # rate 0: the routing stays
              experts_backend="eager", capacity_factor=0.75)  # drops some pairs


def tiny_model(**overrides) -> HizooForCausalLM:
    torch.manual_seed(0)
    return HizooForCausalLM(HizooConfig(**{**CONFIG, **overrides}))


def batches(n: int = 4, b: int = 2, s: int = 8) -> list[torch.Tensor]:
    """n micro-batches input_ids [b, s]."""
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 48, (b, s), generator=g) for _ in range(n)]
