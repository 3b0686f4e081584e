"""init_scheme="switch": the Hi-MoE reference's Switch init (truncated normal, σ = √(scale / fan_in), cut at ±2σ)
on the router, the experts' w13 and every input-side Linear; depth-scaled normal on the residual projections;
embeddings as the reference (normal, or lm_head's Switch init when tied). Checked statistically."""

import math

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM

# std of a standard normal truncated at ±2: √(1 − 4φ(2) / (2Φ(2) − 1))
TRUNCATED_STD = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))
D, F, L, E = 256, 128, 3, 8


def _model(**overrides) -> HizooForCausalLM:
    torch.manual_seed(0)
    fields = dict(vocab_size=512, hidden_size=D, num_hidden_layers=L, num_attention_heads=4, intermediate_size=F,
                  ffn="moe", num_dense_layers=1, router="himoe", num_experts=E, n_groups=2, num_experts_per_tok=4,
                  moe_intermediate_size=F, num_shared_experts=1, init_scheme="switch")
    fields.update(overrides)
    return HizooForCausalLM(HizooConfig(**fields))


def _assert_switch(weight: torch.Tensor, fan_in: int, scale: float = 0.1) -> None:
    sigma = math.sqrt(scale / fan_in)
    w = weight.detach().double().flatten()
    assert w.abs().max() <= 2 * sigma * (1 + 1e-6)  # truncated at ±2σ ...
    assert w.abs().max() >= 1.9 * sigma  # ... and not narrower
    assert abs(w.mean()) < 0.05 * sigma
    assert w.std() == pytest.approx(TRUNCATED_STD * sigma, rel=0.05)  # ≥ 2048 samples: ~2% noise


def _assert_normal(weight: torch.Tensor, std: float) -> None:
    w = weight.detach().double().flatten()
    assert w.std() == pytest.approx(std, rel=0.05)
    assert w.abs().max() > 3 * std  # untruncated tails


def test_switch_init_on_router_experts_and_input_linears():
    model = _model()
    residual_std = 0.02 / math.sqrt(2 * L)
    dense, moe = model.model.layers[0], model.model.layers[1]
    router = moe.ffn.router
    _assert_switch(router.weight, fan_in=D)  # [E, d]
    assert torch.all(router.expert_scale == 1) and torch.all(router.logit_ema == 0)
    _assert_switch(moe.ffn.experts.w13, fan_in=D)  # [E, d, 2f]
    _assert_normal(moe.ffn.experts.w2, residual_std)
    for linear in (moe.attn.q_proj, moe.attn.k_proj, moe.attn.v_proj, dense.ffn.gate_proj, dense.ffn.up_proj,
                   moe.ffn.shared_experts.up_proj, model.lm_head):
        _assert_switch(linear.weight, fan_in=linear.in_features)
    for linear in (moe.attn.o_proj, dense.ffn.down_proj, moe.ffn.shared_experts.down_proj):
        _assert_normal(linear.weight, residual_std)
    _assert_normal(model.model.embed_tokens.weight, 0.02)  # untied: the reference's nn.Embedding rule
    assert torch.all(model.model.norm.weight == 1)


def test_scale_tied_embedding_and_router_override():
    model = _model(switch_init_scale=1.0, tie_word_embeddings=True)
    _assert_switch(model.model.layers[1].ffn.router.weight, fan_in=D, scale=1.0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    _assert_switch(model.model.embed_tokens.weight, fan_in=D, scale=1.0)  # lm_head's init, as the reference's tie
    overridden = _model(router_init_std=0.3)
    _assert_normal(overridden.model.layers[1].ffn.router.weight, 0.3)


def test_normal_scheme_is_unchanged():
    model = _model(init_scheme="normal")
    _assert_normal(model.model.layers[1].ffn.router.weight, 0.02)
    _assert_normal(model.model.layers[1].ffn.experts.w13, 0.02)
    _assert_normal(model.model.layers[1].attn.o_proj.weight, 0.02)


@pytest.mark.parametrize("field, value", [("init_scheme", "xavier"), ("switch_init_scale", 0.0)])
def test_bad_init_fields_raise(field, value):
    with pytest.raises(ValueError, match=field):
        HizooConfig(**{field: value})
