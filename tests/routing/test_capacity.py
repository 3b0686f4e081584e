"""Expert capacity: the reference's formula (floor, even, minimum) and the earlier ceil rule, the drop order
(slot priority as the Hi-MoE code's ``_route_to_slots``, or token order), training vs eval factors."""

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.routing import HiMoERouter, TopKRouter, apply_capacity, expert_capacity


@pytest.mark.parametrize("T, K, E, cf, rule, min_capacity, expected", [
    (10, 2, 4, 1.25, "reference", 4, 6),  # floor(6.25) = 6, even
    (9, 2, 4, 1.25, "reference", 4, 6),  # floor(5.625) = 5 -> rounded up to even 6
    (2, 2, 4, 1.25, "reference", 4, 4),  # floor(1.25) = 1 -> 2 -> at least min_capacity 4
    (2, 2, 4, 1.25, "reference", 0, 2),
    (12288, 8, 32, 2.0, "reference", 4, 6144),  # the Hi-MoE example: 12 x 1024 tokens, K = 8, E = 32
    (10, 2, 4, 1.25, "ceil", 4, 7),  # ceil(6.25), no minimum
    (2, 2, 4, 1.25, "ceil", 4, 2),
])
def test_expert_capacity_formulas(T, K, E, cf, rule, min_capacity, expected):
    assert expert_capacity(T, K, E, cf, rule, min_capacity) == expected


def _loop_reference(expert_idx, num_experts, capacity, priority):
    """Independent reference: walk the pairs in arrival order and count per expert."""
    T, K = expert_idx.shape
    order = [(t, k) for k in range(K) for t in range(T)] if priority == "slot" else \
        [(t, k) for t in range(T) for k in range(K)]
    used, dropped = [0] * num_experts, torch.zeros(T, K, dtype=torch.bool)
    for t, k in order:
        e = int(expert_idx[t, k])
        dropped[t, k] = used[e] >= capacity
        used[e] += 1
    return dropped


def test_slot_priority_keeps_first_choices_before_second_choices():
    idx = torch.tensor([[0, 1], [1, 0], [0, 2]])  # 3 tokens, K = 2, C = ceil(0.5 · 3 · 2 / 3) = 1
    weight = torch.full((3, 2), 0.5)
    w_slot, slot = apply_capacity(idx, weight, 3, 0.5, rule="ceil", priority="slot")
    # expert 0: token 0's first choice is kept; token 2's first choice and token 1's second choice are not
    assert slot.tolist() == [[False, True], [False, True], [True, False]]
    _, token = apply_capacity(idx, weight, 3, 0.5, rule="ceil", priority="token")
    assert token.tolist() == [[False, False], [True, True], [True, False]]
    assert w_slot.tolist() == [[0.5, 0.0], [0.5, 0.0], [0.0, 0.5]]  # kept weights are not renormalized


@pytest.mark.parametrize("priority", ["slot", "token"])
def test_apply_capacity_matches_a_python_loop(priority):
    torch.manual_seed(0)
    T, K, E = 50, 3, 6
    idx = torch.stack([torch.randperm(E)[:K] for _ in range(T)])  # distinct experts per token
    idx[:20, 0] = 2  # crowd one expert so that it overflows
    weight = torch.rand(T, K)
    for cf in (0.3, 0.8, 1.5):
        for rule in ("reference", "ceil"):
            capacity = expert_capacity(T, K, E, cf, rule)
            out, dropped = apply_capacity(idx, weight, E, cf, rule=rule, priority=priority)
            expected = _loop_reference(idx, E, capacity, priority)
            assert torch.equal(dropped, expected), (cf, rule)
            assert torch.equal(out, weight.masked_fill(expected, 0.0))
    assert dropped.any()


def test_training_and_eval_use_their_own_capacity_factor():
    router = TopKRouter(2, 2, top_k=1, aux_loss_coef=0.0, z_loss_coef=0.0, capacity_factor=0.5,
                        eval_capacity_factor=2.0, min_capacity=0)
    with torch.no_grad():
        router.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0]] * 8)  # every token -> expert 0
    train = router.train()(x)  # C = floor(0.5 · 8 / 2) = 2
    assert train.dropped.sum() == 6
    evaluated = router.eval()(x)  # C = floor(2 · 8 / 2) = 8
    assert evaluated.dropped.sum() == 0
    router.eval_capacity_factor = None  # None: the training factor in eval too
    assert router(x).dropped.sum() == 6


def test_himoe_drops_within_group_second_choices_first():
    """Hi-MoE slot order is (group 0 first, group 0 second, group 1 first, ...): with slot priority a token
    whose first choice in a group is expert e beats every token that has e as its second choice."""
    router = HiMoERouter(4, 4, top_k=4, n_groups=2, tau=0.0, aux_loss_coef=0.0, z_loss_coef=0.0,
                         lambda_intra=0.0, lambda_inter=0.0, capacity_factor=0.5, capacity_rule="ceil").eval()
    with torch.no_grad():
        router.weight.copy_(torch.eye(4))
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]])  # token 0 prefers 1 and 3, token 1 prefers 0, 2
    r = router(x)  # C = ceil(0.5 · 2 · 4 / 4) = 1 per expert; every expert is one token's 1st and the other's 2nd
    assert r.expert_idx.tolist() == [[1, 0, 3, 2], [0, 1, 2, 3]]
    assert r.dropped.tolist() == [[False, True, False, True], [False, True, False, True]]


def test_config_fields_reach_the_router_and_model_reports_drops():
    config = HizooConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, ffn="moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8,
                         experts_backend="grouped_mm", capacity_factor=0.5, eval_capacity_factor=4.0,
                         capacity_rule="ceil", min_capacity=0, capacity_priority="token")
    model = HizooForCausalLM(config)
    router = model.model.layers[0].ffn.router
    assert (router.capacity_factor, router.eval_capacity_factor) == (0.5, 4.0)
    assert (router.capacity_rule, router.min_capacity, router.capacity_priority) == ("ceil", 0, "token")
    ids = torch.randint(0, 32, (2, 16))
    assert model.train()(ids).routing[0].dropped.any()  # C = 4 pairs per expert for 64 pairs
    assert not model.eval()(ids).routing[0].dropped.any()  # C = 32: nothing can overflow


@pytest.mark.parametrize("field, value", [("capacity_rule", "floor"), ("capacity_priority", "random"),
                                          ("min_capacity", -1), ("eval_capacity_factor", 0.0)])
def test_bad_capacity_fields_raise(field, value):
    with pytest.raises(ValueError, match=field):
        HizooConfig(**{field: value})
