"""HizooConfig: JSON round trip, Auto registration, and a clear ValueError for every bad value."""

import pytest
from transformers import AutoConfig

import hizoo
from hizoo import HizooConfig


def test_json_round_trip(tmp_path):
    config = HizooConfig(vocab_size=320, hidden_size=96, num_hidden_layers=3, num_attention_heads=6,
                         num_key_value_heads=2, qk_norm=True, ffn="moe", num_experts=8, num_experts_per_tok=2,
                         rope_theta=5e5, tie_word_embeddings=True)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, HizooConfig)
    ours, theirs = loaded.to_dict(), config.to_dict()
    ours.pop("_name_or_path"), theirs.pop("_name_or_path")
    assert ours == theirs
    assert loaded.head_dim == 16 and loaded.num_key_value_heads == 2 and loaded.tie_word_embeddings


def test_derived_defaults():
    config = HizooConfig(hidden_size=128, num_attention_heads=4, n_groups=1)
    assert config.num_key_value_heads == 4
    assert config.head_dim == 32
    assert config.topk_groups == config.n_groups
    assert hizoo.HizooConfig is HizooConfig


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(hidden_size=100, num_attention_heads=8), "hidden_size=100"),
        (dict(num_attention_heads=8, num_key_value_heads=3), "num_key_value_heads=3"),
        (dict(hidden_size=-8), "hidden_size=-8"),
        (dict(vocab_size=0), "vocab_size=0"),
        (dict(num_hidden_layers=0), "num_hidden_layers=0"),
        (dict(intermediate_size=-1), "intermediate_size=-1"),
        (dict(ffn="sparse"), "ffn='sparse'"),
        (dict(hidden_act="gelu"), "hidden_act='gelu'"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps=0.0"),
        (dict(rope_theta=-1.0), "rope_theta=-1.0"),
        (dict(attention_dropout=1.5), "attention_dropout=1.5"),
        (dict(pad_token_id=40000), "pad_token_id=40000"),
        (dict(hidden_size=24, num_attention_heads=8), "head_dim=3"),
        (dict(router="random"), "router='random'"),
        (dict(experts_backend="cuda"), "experts_backend='cuda'"),
        (dict(ffn="moe", num_experts=4, num_experts_per_tok=5), "num_experts_per_tok=5"),
        (dict(ffn="moe", router="himoe", num_experts=30, n_groups=4), "n_groups=4"),
        (dict(ffn="moe", router="himoe", num_experts=16, n_groups=4, topk_groups=2, num_experts_per_tok=12), "k_g=6"),
        (dict(ffn="moe", router="himoe", n_groups=4, topk_groups=5), "topk_groups=5"),
        (dict(router_aux_loss_coef=-0.01), "router_aux_loss_coef=-0.01"),
        (dict(himoe_ema_beta=1.0), "himoe_ema_beta=1.0"),
        (dict(residual="dense"), "residual='dense'"),
        (dict(ffn="moe", router="himoe", n_groups=4, router_global_balance=True), "router_global_balance=True"),
        (dict(residual="none", n_streams=4), "n_streams=4"),
        (dict(residual="hc", n_streams=0), "n_streams=0"),
        (dict(residual="hc", n_streams=2, stream_init="magic"), "stream_init='magic'"),
        (dict(residual="mhc", n_streams=1), "n_streams=1"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError) as err:
        HizooConfig(**kwargs)
    assert field in str(err.value)
