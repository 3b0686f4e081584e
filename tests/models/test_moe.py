"""MoEFeedForward with every router, shared experts, router state hooks, checkpointing, config errors."""

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.moe import MoEFeedForward, update_router_states
from hizoo.routing import GroupLimitedRouter, HiMoERouter, TopKRouter

TINY = dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            ffn="moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, experts_backend="grouped_mm")
ROUTERS = {
    "topk": (dict(router="topk"), TopKRouter),
    "group_limited": (dict(router="group_limited", n_groups=4, topk_groups=2, seq_aux_loss_coef=1e-3),
                      GroupLimitedRouter),
    "himoe": (dict(router="himoe", n_groups=2), HiMoERouter),
}


def _init(module):
    for p in module.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.2)


@pytest.mark.parametrize("name", list(ROUTERS))
def test_moe_feed_forward_with_each_router(name):
    overrides, cls = ROUTERS[name]
    torch.manual_seed(0)
    moe = MoEFeedForward(HizooConfig(**{**TINY, **overrides}))
    _init(moe)
    assert isinstance(moe.router, cls)
    h = torch.randn(2, 5, 16)
    out, routing = moe(h)
    assert out.shape == (2, 5, 16) and routing.expert_idx.shape == (10, 2)
    expected = moe.experts(h.view(10, 16), routing.expert_idx, routing.expert_weight).view(2, 5, 16)
    torch.testing.assert_close(out, expected)
    (out.sum() + routing.aux_loss).backward()
    assert moe.router.weight.grad.abs().sum() > 0


def test_shared_experts_are_added_to_routed_output():
    torch.manual_seed(0)
    moe = MoEFeedForward(HizooConfig(**TINY, num_shared_experts=2))
    _init(moe)
    h = torch.randn(1, 4, 16)
    out, routing = moe(h)
    x = h.view(4, 16)
    routed = moe.experts(x, routing.expert_idx, routing.expert_weight)
    torch.testing.assert_close(out.view(4, 16), routed + moe.shared_experts(x))
    assert moe.shared_experts.gate_proj.out_features == 16


def test_capacity_factor_reports_dropped_pairs_in_model_output():
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**TINY, capacity_factor=0.5))
    routing = model(torch.randint(0, 32, (2, 32))).routing  # C = floor(2 · 0.5 · 64 / 8) = 8 pairs per expert
    for r in routing:
        assert r.dropped is not None and r.dropped.any()  # capacity 0.5 must drop half the pairs or more
        assert (r.expert_weight[r.dropped] == 0).all()


def test_update_router_states_calls_each_router():
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**TINY, router="group_limited", n_groups=4, topk_groups=2,
                                         router_bias_update_rate=0.5)).train()
    model(torch.randint(0, 32, (2, 8)))
    update_router_states(model)
    for layer in model.model.layers:
        assert layer.ffn.router.expert_bias.abs().sum() > 0 and layer.ffn.router.step_load.sum() == 0


def test_reentrant_checkpointing_is_refused_for_moe_layers():
    """Reentrant checkpointing would drop the router losses' gradient (they leave the block in RoutingResult)."""
    model = HizooForCausalLM(HizooConfig(**TINY, router="himoe", n_groups=2)).train()
    with pytest.raises(ValueError, match="use_reentrant=True is not supported for MoE layers"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    dense = HizooForCausalLM(HizooConfig(**{**TINY, "ffn": "dense"})).train()
    dense.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    ids = torch.randint(0, 32, (2, 8))
    dense(ids, labels=ids).loss.backward()  # dense blocks return only tensors: reentrant checkpointing is fine


@pytest.mark.parametrize("router", ["himoe", "group_limited", "topk_global"])
def test_gradient_checkpointing_updates_router_state_once(router):
    """Two optimizer steps with and without transformers' gradient checkpointing: the same router state (Hi-MoE
    EMA, loss-free bias and its step loads, global-batch counts) and the same gradients, because HizooBlock's
    checkpointing marks the recompute (routing.recompute_aware) and the routers skip their updates in it."""
    overrides = dict(router="topk", router_global_balance=True) if router == "topk_global" else ROUTERS[router][0]
    config = {**TINY, **overrides, "router_bias_update_rate": 0.05}
    torch.manual_seed(0)
    plain = HizooForCausalLM(HizooConfig(**config)).train()
    ckpt = HizooForCausalLM(HizooConfig(**config)).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.activation_checkpointing_enable()  # non-reentrant, transformers' default
    assert all(layer.gradient_checkpointing for layer in ckpt.model.layers)
    for step in range(2):
        ids = torch.randint(0, 32, (2, 8))
        for model in (plain, ckpt):
            model.zero_grad()
            model(ids, labels=ids).loss.backward()
        for a, b in zip(plain.model.layers, ckpt.model.layers):
            for name, buf in a.ffn.router.named_buffers():  # before the step's update: counts and loads
                torch.testing.assert_close(dict(b.ffn.router.named_buffers())[name], buf, msg=f"{step} {name}")
            torch.testing.assert_close(b.ffn.router.weight.grad, a.ffn.router.weight.grad)
            assert not b.ffn.router.recomputing
        update_router_states(plain)
        update_router_states(ckpt)
    for a, b in zip(plain.model.layers, ckpt.model.layers):
        for name, buf in a.ffn.router.named_buffers():  # after the updates: the bias and EMA moved alike
            torch.testing.assert_close(dict(b.ffn.router.named_buffers())[name], buf, msg=name)
    if router == "group_limited":
        assert plain.model.layers[0].ffn.router.expert_bias.abs().sum() > 0  # the bias did move


def test_init_weights_resets_router_state():
    model = HizooForCausalLM(HizooConfig(**TINY, router="himoe", n_groups=2))
    router = model.model.layers[0].ffn.router
    assert torch.all(router.expert_scale == 1) and torch.all(router.logit_ema == 0) and router.step.item() == 0


@pytest.mark.parametrize("overrides, field", [
    (dict(num_experts_per_tok=9), "num_experts_per_tok=9"),
    (dict(router="himoe", n_groups=3), "n_groups=3"),
    (dict(router="himoe", n_groups=4, num_experts_per_tok=8, topk_groups=2), "k_g=4"),
    (dict(router="group_limited", n_groups=4, topk_groups=1, num_experts_per_tok=3), "num_experts_per_tok=3"),
    (dict(router_aux_loss_coef=-0.1), "router_aux_loss_coef"),
    (dict(router="himoe", n_groups=2, himoe_lambda_inter=-1.0), "himoe_lambda_inter"),
    (dict(router_bias_update_rate=-1e-3), "router_bias_update_rate"),
    (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(router_global_balance="yes"), "router_global_balance"),
])
def test_bad_moe_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        HizooConfig(**{**TINY, **overrides})
