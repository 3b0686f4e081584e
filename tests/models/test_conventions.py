"""transformers' conventions, as OLMoE and Qwen3-MoE follow them: output flags from the config, tuples for
return_dict=False, `cache` with the deprecated `past_key_values` name, packed sequences from position_ids, scaled
RoPE from `rope_parameters` (checked against transformers' own OLMoE and against hand-computed frequencies), and
the DeepSeek-V3 / Qwen3-MoE field names."""

import math

import pytest
import torch
from transformers import OlmoeConfig, OlmoeForCausalLM

from hizoo import HizooConfig, HizooForCausalLM, HizooModel
from hizoo.models.rope import HizooRotaryEmbedding

TINY = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, qk_norm=True, ffn="moe", num_experts=8, num_experts_per_tok=2,
            moe_intermediate_size=32, num_dense_layers=1, experts_backend="eager")


def _model(**overrides) -> HizooForCausalLM:
    torch.manual_seed(0)
    return HizooForCausalLM(HizooConfig(**{**TINY, **overrides})).eval()


def test_config_output_flags_are_honoured_and_the_keyword_wins():
    model = _model(output_hidden_states=True, output_attentions=True, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"  # as in transformers, only eager attention has weights
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        out = model(ids)
        off = model(ids, output_hidden_states=False, output_attentions=False)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 7, 64)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 7, 7)
    assert off.hidden_states is None and off.attentions is None


def test_hidden_states_select_layers_by_index():
    model = _model()
    ids = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        every = model(ids, output_hidden_states=True).hidden_states
        last = model(ids, output_hidden_states=[-1]).hidden_states
        first = model(ids, output_hidden_states=0).hidden_states
    assert last[:2] == (None, None) and torch.equal(last[2], every[2])
    assert torch.equal(first[0], every[0]) and first[1:] == (None, None)
    with pytest.raises(ValueError, match=r"output_hidden_states=\[3\] must be True, False, or indices in \[-3, 3\)"):
        model(ids, output_hidden_states=[3])


@pytest.mark.parametrize("where", ["keyword", "config"])
def test_return_dict_false_gives_tuples(where):
    model = _model()
    ids = torch.randint(0, 97, (2, 6))
    if where == "config":
        model.config.return_dict = False
    kwargs = {"return_dict": False} if where == "keyword" else {}
    with torch.no_grad():
        ref = model(ids, labels=ids, return_dict=True)
        lm = model(ids, labels=ids, **kwargs)
        base = model.model(ids, **kwargs)
    assert isinstance(lm, tuple) and isinstance(base, tuple)
    torch.testing.assert_close(lm[0], ref.loss)
    assert lm[0].ndim == 0 and any(torch.is_tensor(x) and torch.equal(x, ref.logits) for x in lm)
    assert base[0].shape == (2, 6, 64)  # last_hidden_state first


def test_past_key_values_is_the_deprecated_name_of_cache():
    model = _model()
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :5], use_cache=True)
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated .* Use `cache` instead"):
            step = model(ids[:, 5:], past_key_values=first.cache, use_cache=True)
    torch.testing.assert_close(step.logits, full[:, 5:], atol=1e-5, rtol=1e-5)
    assert not hasattr(step, "past_key_values") or step.past_key_values is step.cache


def test_packed_sequences_in_position_ids_attend_within_their_own_sequence():
    """transformers' convention: position_ids that restart at 0 (no attention mask, no cache) mark packed sequences."""
    model = _model()
    a, b = torch.randint(0, 97, (1, 4)), torch.randint(0, 97, (1, 5))
    packed = torch.cat([a, b], dim=1)
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4]])
    with torch.no_grad():
        got = model(packed, position_ids=positions, use_cache=False).logits
        alone = torch.cat([model(a).logits, model(b).logits], dim=1)
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------- RoPE
def test_default_rope_is_the_plain_rotary_formula():
    config = HizooConfig(**TINY, rope_theta=500.0)
    cos, sin = HizooRotaryEmbedding(config)(torch.zeros(1), torch.tensor([[0, 3, 7]]))
    d = config.head_dim
    i = torch.arange(d // 2, dtype=torch.float64)
    angle = torch.tensor([0.0, 3.0, 7.0], dtype=torch.float64)[:, None] * 500.0 ** (-2 * i / d)  # [3, d/2]
    torch.testing.assert_close(cos[0].double(), torch.cat([angle.cos(), angle.cos()], -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[0].double(), torch.cat([angle.sin(), angle.sin()], -1), atol=1e-6, rtol=0)


def test_linear_rope_scaling_divides_the_positions_by_the_factor():
    plain = HizooRotaryEmbedding(HizooConfig(**TINY))
    scaled = HizooRotaryEmbedding(HizooConfig(**TINY, rope_parameters={"rope_type": "linear", "factor": 4.0}))
    x = torch.zeros(1)
    for got, ref in zip(scaled(x, torch.tensor([[4, 8, 36]])), plain(x, torch.tensor([[1, 2, 9]]))):
        torch.testing.assert_close(got, ref)


ROPES = [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
    {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8},
]


@pytest.mark.parametrize("rope", ROPES, ids=[r["rope_type"] for r in ROPES])
def test_scaled_rope_gives_transformers_olmoe_logits(rope):
    """max_position_embeddings 16 and 24 tokens: dynamic NTK rescales beyond 16; YaRN and Llama-3 stretch 8 -> 32."""
    torch.manual_seed(0)
    olmoe = OlmoeForCausalLM(OlmoeConfig(
        vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, pad_token_id=0, eos_token_id=1,
        max_position_embeddings=16 if rope["rope_type"] == "dynamic" else 32,
        rope_parameters={**rope, "rope_theta": 100.0})).eval()
    with torch.no_grad():
        for p in olmoe.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.1)
    ours = HizooForCausalLM.from_olmoe(olmoe)
    assert ours.config.rope_parameters["rope_type"] == rope["rope_type"] and ours.config.rope_theta == 100.0
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        ref = olmoe(ids).logits
        got = ours(ids).logits
        plain = HizooForCausalLM.from_olmoe(olmoe, max_position_embeddings=32,
                                            rope_parameters={"rope_type": "default", "rope_theta": 100.0})(ids)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (plain.logits - ref).abs().max() > 1e-2  # the scaling changed the model: the comparison has teeth


def test_rope_parameters_survive_save_and_load(tmp_path):
    model = _model(rope_parameters={"rope_type": "yarn", "factor": 2.0}, max_position_embeddings=64)
    model.save_pretrained(tmp_path)
    loaded = HizooForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.rope_parameters == model.config.rope_parameters
    ids = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("bad, message", [
    ({"rope_type": "ntk"}, "rope_parameters['rope_type']='ntk' is not allowed"),
    ({"rope_type": "linear"}, "rope_parameters['factor']=None must be a number >= 1 for rope_type='linear'"),
    ({"rope_type": "yarn", "factor": 2.0, "rope_theta": 10.0, "partial_rotary_factor": 0.5},
     "partial_rotary_factor']=0.5 is not supported"),
])
def test_bad_rope_parameters_raise(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        HizooConfig(**TINY, rope_parameters=bad)


def test_rope_theta_and_rope_parameters_theta_must_agree():
    assert HizooConfig(**TINY, rope_parameters={"rope_type": "default", "rope_theta": 123.0}).rope_theta == 123.0
    assert HizooConfig(**TINY, rope_theta=50.0).rope_parameters == {"rope_type": "default", "rope_theta": 50.0}
    with pytest.raises(ValueError, match="rope_theta=50.0 and rope_parameters\\['rope_theta'\\]=123.0"):
        HizooConfig(**TINY, rope_theta=50.0, rope_parameters={"rope_type": "default", "rope_theta": 123.0})


# --------------------------------------------------------------------------------------------------- field names
GROUPED = dict(TINY, router="group_limited", num_experts=8, num_experts_per_tok=2)


def test_deepseek_v3_and_qwen3_moe_names_set_hizoos_fields():
    config = HizooConfig(**{k: v for k, v in GROUPED.items() if k not in ("num_experts", "num_dense_layers")},
                         n_routed_experts=8, n_group=4, topk_group=2, n_shared_experts=1, first_k_dense_replace=1)
    assert (config.num_experts, config.n_groups, config.topk_groups) == (8, 4, 2)
    assert (config.num_shared_experts, config.num_dense_layers) == (1, 1)
    assert (config.n_group, config.topk_group, config.first_k_dense_replace) == (4, 2, 1)  # readable by either name
    saved = config.to_dict()
    assert "n_group" not in saved and saved["n_groups"] == 4  # saved under hizoo's names
    assert HizooConfig(**{**TINY, "num_local_experts": 8}).num_experts == 8
    # topk_groups defaults to n_groups when only the DeepSeek name is given (derived after the rename)
    assert HizooConfig(**{k: v for k, v in GROUPED.items()}, n_group=4).topk_groups == 4


def test_both_spellings_with_different_values_raise():
    with pytest.raises(ValueError, match="n_group=4 and n_groups=2 name the same setting"):
        HizooConfig(**GROUPED, n_group=4, n_groups=2)
    assert HizooConfig(**GROUPED, n_group=4, n_groups=4).n_groups == 4
    with pytest.raises(ValueError, match="first_k_dense_replace=2 and num_dense_layers=1"):
        HizooConfig(**TINY, first_k_dense_replace=2)


def test_mlp_only_layers_are_dense_as_in_qwen3_moe():
    model = _model(num_hidden_layers=4, num_dense_layers=0, mlp_only_layers=[1, 3])
    assert [layer.is_moe for layer in model.model.layers] == [True, False, True, False]
    ids = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        out = model(ids)
    assert [r is None for r in out.routing] == [False, True, False, True]
    for bad, message in (([4], r"mlp_only_layers=\[4\] holds \[4\], outside the layers \[0, num_hidden_layers=4\)"),
                         ([1, 1], "repeats a layer index"), ("1", "must be a list of integers")):
        with pytest.raises(ValueError, match=message):
            HizooConfig(**{**TINY, "num_hidden_layers": 4, "mlp_only_layers": bad})


def test_base_model_and_lm_agree_on_the_router_logits():
    model = _model()
    ids = torch.randint(0, 97, (2, 5))
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
        base = model.model(ids)
    assert isinstance(model.model, HizooModel)
    assert len(out.router_logits) == 1 and out.router_logits[0].shape == (10, 8)  # one MoE layer of two
    torch.testing.assert_close(out.router_logits[0], base.router_logits[0])
    assert math.isclose(out.router_logits[0].softmax(-1).sum().item(), 10.0, rel_tol=1e-5)
