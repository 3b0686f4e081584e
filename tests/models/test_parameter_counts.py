"""HizooConfig.num_parameters against the parameters of the model the config builds, for every kind of model:
dense and MoE (each router, shared experts, dense layers), qk-norm, biases, GQA, tied heads, every residual and
every stream expansion; active parameters leave out the E − K routed experts a token does not use."""

import pytest

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.configuration import STREAM_INITS

BASE = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=16)
MOE = dict(ffn="moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8)
KINDS = {
    "dense": {},
    "dense_gqa_qknorm_bias_tied": dict(num_attention_heads=4, num_key_value_heads=2, qk_norm=True,
                                       attention_bias=True, tie_word_embeddings=True),
    "head_dim_not_d_over_h": dict(head_dim=6),
    "topk_shared": dict(MOE, router="topk", num_shared_experts=2),
    "group_limited": dict(MOE, router="group_limited", n_groups=4, topk_groups=2),
    "himoe_first_dense": dict(MOE, router="himoe", n_groups=2, num_dense_layers=1),
    "himoe_mlp_only": dict(MOE, router="himoe", n_groups=2, num_hidden_layers=3, mlp_only_layers=[2]),
    "hc_dynamic": dict(residual="hc", n_streams=3),
    "hc_static_one_stream": dict(residual="hc", n_streams=1, hc_dynamic=False),
    "mhc": dict(residual="mhc", n_streams=4),
    "mhc_lite": dict(residual="mhc_lite", n_streams=3),
    **{f"mhc_{init}": dict(residual="mhc", n_streams=3, stream_init=init) for init in STREAM_INITS},
    "hc_moe_lss_odd_width": dict(MOE, router="topk", residual="hc", n_streams=2, stream_init="rotate",
                                 hidden_size=18, num_attention_heads=3),
}


@pytest.mark.parametrize("kind", KINDS)
def test_num_parameters_is_the_built_models(kind):
    config = HizooConfig(**{**BASE, **KINDS[kind]})
    model = HizooForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())  # a tied lm_head is yielded once
    assert config.num_parameters() == total
    experts = [layer.ffn.experts for layer in model.model.layers if hasattr(layer.ffn, "experts")]
    unused = sum(sum(p.numel() for p in e.parameters()) * (config.num_experts - config.num_experts_per_tok)
                 // config.num_experts for e in experts)
    assert config.num_parameters(active=True) == total - unused
    if config.ffn == "moe":
        assert unused > 0


def test_hand_count_of_a_small_moe():
    # per layer: 2 norms 2·16, attention 4·16·16, router 8·16, 8 experts of 3·16·8; embedding, head 50·16; final norm
    config = HizooConfig(**BASE, **MOE)
    layer = 2 * 16 + 4 * 16 * 16 + 8 * 16 + 8 * 3 * 16 * 8
    assert config.num_parameters() == 2 * (50 * 16) + 2 * layer + 16
    assert config.num_parameters() - config.num_parameters(active=True) == 2 * 6 * 3 * 16 * 8


def test_stream_embedding_scale_adds_no_parameters():
    plain = HizooConfig(**BASE)
    assert HizooConfig(**BASE, stream_embedding_scale=4.0).num_parameters() == plain.num_parameters()
