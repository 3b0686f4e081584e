"""Which parameters AdamW decays under each ``weight_decay_rule``: the exact names for an HC, mHC, mHC-lite + LSS
and Hi-MoE model, against the official codes' shapes (models/weight_decay.py)."""

from types import SimpleNamespace

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.lightning import HizooLightningModule
from hizoo.models.weight_decay import decayed_parameter_names, parameter_groups

ONE_LAYER = dict(vocab_size=61, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)
# always decayed: embeddings and every weight matrix (the nanoGPT rule in both official codes)
MATRICES = ["model.embed_tokens.weight", "model.layers.0.attn.q_proj.weight", "model.layers.0.attn.k_proj.weight",
            "model.layers.0.attn.v_proj.weight", "model.layers.0.attn.o_proj.weight", "lm_head.weight"]
DENSE = ["model.layers.0.ffn.gate_proj.weight", "model.layers.0.ffn.up_proj.weight",
         "model.layers.0.ffn.down_proj.weight"]


def _conn(*names):
    return [f"model.layers.0.{branch}_conn.{name}" for branch in ("attn", "ffn") for name in names]


CASES = {
    # official HC: static_alpha [n, 1 + n] = [A_m | A_r] and dynamic_alpha_fn [d, 1 + n] are 2-D; static_beta [n],
    # dynamic_beta_fn [d], the two scales and the norm's γ are not
    "hc": (dict(residual="hc", n_streams=2, hc_dynamic=True),
           _conn("static_read", "static_mix", "dynamic_proj")),
    # official mHC: static_alpha [n, 1 + n] = [b_pre | b_res] and both projections are 2-D; static_beta (b_post),
    # the three α and γ are not
    "mhc": (dict(residual="mhc", n_streams=2), _conn("pre_bias", "res_bias", "proj")),
    # official mHC-lite: static_alpha [n + n!] is 1-D, so only the projections; LSS's lss [n, d] is 2-D
    "mhc_lite_lss": (dict(residual="mhc_lite", n_streams=2, stream_init="lss"),
                     ["model.expand.stream_scale"] + _conn("proj")),
    # Hi-MoE: the gate, the experts, and the per-expert scale (router_scale is stored [1, E] there)
    "himoe": (dict(ffn="moe", router="himoe", num_experts=8, n_groups=2, num_experts_per_tok=4,
                   moe_intermediate_size=16),
              ["model.layers.0.ffn.router.weight", "model.layers.0.ffn.router.expert_scale",
               "model.layers.0.ffn.experts.w13", "model.layers.0.ffn.experts.w2"]),
}


def _model(overrides):
    torch.manual_seed(0)
    return HizooForCausalLM(HizooConfig(**ONE_LAYER, **overrides))


@pytest.mark.parametrize("case", list(CASES))
def test_reference_rule_decays_exactly_the_official_two_dimensional_counterparts(case):
    overrides, extra = CASES[case]
    model = _model(overrides)
    ffn = [] if case == "himoe" else DENSE
    expected = set(MATRICES + ffn + extra)
    assert set(decayed_parameter_names(model, "reference")) == expected
    assert set(decayed_parameter_names(model)) == expected  # the default
    if case == "himoe":
        return
    # what the reference rule leaves out: norms and the connections' other coefficients
    kept = {n for n, _ in model.named_parameters()} - expected
    assert "model.norm.weight" in kept and all(n.endswith("norm.weight") or "_conn." in n for n in kept)


@pytest.mark.parametrize("case", list(CASES))
def test_matrices_rule_decays_only_matrices_outside_the_streams(case):
    overrides, _ = CASES[case]
    model = _model(overrides)
    if case == "himoe":
        expected = MATRICES + ["model.layers.0.ffn.router.weight", "model.layers.0.ffn.experts.w13",
                               "model.layers.0.ffn.experts.w2"]
    else:
        expected = MATRICES + DENSE
    assert set(decayed_parameter_names(model, "matrices")) == set(expected)


def test_hizoo_own_stream_inits_follow_the_rule_on_their_own_shape():
    for init in ("rotate", "split", "balanced_rotate"):
        model = _model(dict(residual="hc", n_streams=2, stream_init=init))
        names = decayed_parameter_names(model, "reference")
        assert [n for n in names if ".expand." in n] == [n for n, _ in model.named_parameters() if ".expand." in n]


def test_lightning_module_builds_adamw_groups_from_the_rule():
    overrides, extra = CASES["mhc_lite_lss"]
    for rule in ("reference", "matrices"):
        module = HizooLightningModule(dict(ONE_LAYER, **overrides), weight_decay=0.1, weight_decay_rule=rule)
        module._trainer = SimpleNamespace(estimated_stepping_batches=10)
        module.configure_model()
        optimizer = module.configure_optimizers()["optimizer"]
        decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
        names = {n for n, p in module.model.named_parameters() if id(p) in decayed}
        assert names == set(decayed_parameter_names(module.model, rule))
        assert optimizer.param_groups[0]["weight_decay"] == 0.1 and optimizer.param_groups[1]["weight_decay"] == 0.0
        assert ("model.expand.stream_scale" in names) == (rule == "reference")
    groups = parameter_groups(module.model, 0.1, "reference")
    assert sum(len(g["params"]) for g in groups) == len(list(module.model.parameters()))


def test_bad_rule_raises_a_clear_error():
    with pytest.raises(ValueError, match="weight_decay_rule='all'.*'reference', 'matrices'"):
        HizooLightningModule(dict(ONE_LAYER), weight_decay_rule="all")
    with pytest.raises(ValueError, match="weight_decay_rule='all'"):
        decayed_parameter_names(_model({}), "all")
