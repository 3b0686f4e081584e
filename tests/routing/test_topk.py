"""TopKRouter: exact choices on hand-made logits, losses, global-batch balance, capacity, gradients."""

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from hizoo.routing import TopKRouter, apply_capacity, recompute_aware


def identity_router(E: int, **kwargs) -> TopKRouter:
    """Router whose logits are the input itself (weight = I), so tests choose the logits directly."""
    router = TopKRouter(E, E, **kwargs)
    with torch.no_grad():
        router.weight.copy_(torch.eye(E))
    return router


def test_exact_experts_and_weights():
    x = torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 5.0, 1.0]])
    p = x.softmax(-1)
    raw = identity_router(4, top_k=2)(x)
    assert raw.expert_idx.tolist() == [[0, 3], [2, 3]]
    torch.testing.assert_close(raw.expert_weight, torch.stack([p[0, [0, 3]], p[1, [2, 3]]]))
    normed = identity_router(4, top_k=2, norm_topk_prob=True)(x)
    torch.testing.assert_close(normed.expert_weight.sum(-1), torch.ones(2))
    torch.testing.assert_close(normed.expert_weight[0, 0], p[0, 0] / (p[0, 0] + p[0, 3]))
    assert raw.dropped is None


def test_losses_match_formulas():
    x = torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 5.0, 1.0]])
    r = identity_router(4, top_k=1, aux_loss_coef=0.5, z_loss_coef=0.25)(x)
    p = x.softmax(-1)
    f = torch.tensor([0.5, 0.0, 0.5, 0.0])  # token 0 -> expert 0, token 1 -> expert 2
    torch.testing.assert_close(r.aux_losses["load_balance"], 0.5 * 4 * (f * p.mean(0)).sum())
    torch.testing.assert_close(r.aux_losses["z"], 0.25 * torch.logsumexp(x, -1).square().mean())


def test_load_balance_counts_tokens_so_fractions_sum_to_k():
    """f_i = (tokens routing to i) / T with Σ f = K (transformers' load_balancing_loss_func, the Hi-MoE code)."""
    x = torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 5.0, 1.0], [1.0, 4.0, 0.0, 0.0]])
    r = identity_router(4, top_k=2, aux_loss_coef=1.0, z_loss_coef=0.0)(x)
    # choices: {0, 3}, {2, 3}, {1, 0} -> expert 0 twice, 1 once, 2 once, 3 twice, over T = 3 tokens
    f = torch.tensor([2.0, 1.0, 1.0, 2.0]) / 3
    P = x.softmax(-1).mean(0)
    torch.testing.assert_close(r.aux_losses["load_balance"], 4 * (f * P).sum())
    uniform = identity_router(4, top_k=2, aux_loss_coef=1.0)(torch.zeros(6, 4))  # P = 1/E, Σ f = K
    torch.testing.assert_close(uniform.aux_losses["load_balance"], torch.tensor(2.0))


def test_global_balance_with_k_2_normalizes_by_tokens():
    router = identity_router(4, top_k=2, global_balance=True, z_loss_coef=0.0).train()
    a = torch.tensor([[5.0, 4.0, 0, 0]])  # experts 0, 1
    b = torch.tensor([[0, 0, 5.0, 4.0], [0, 4.0, 5.0, 0]])  # {2, 3}, {2, 1}
    router(a)
    out = router(b)
    f = torch.tensor([1.0, 2.0, 2.0, 1.0]) / 3  # 3 tokens so far, Σ f = 2
    torch.testing.assert_close(out.aux_losses["load_balance"], 0.01 * 4 * (f * b.softmax(-1).mean(0)).sum())


def test_global_balance_accumulates_micro_batches_and_resets():
    router = identity_router(4, top_k=1, global_balance=True, z_loss_coef=0.0).train()
    a = torch.tensor([[5.0, 0, 0, 0], [5.0, 0, 0, 0]])  # both tokens -> expert 0
    b = torch.tensor([[0, 5.0, 0, 0], [0, 0, 5.0, 0]])  # experts 1 and 2
    router(a)
    out = router(b)
    f_global = torch.tensor([0.5, 0.25, 0.25, 0.0])  # over the 4 slots of both micro-batches
    torch.testing.assert_close(out.aux_losses["load_balance"], 0.01 * 4 * (f_global * b.softmax(-1).mean(0)).sum())
    router.end_of_step()
    assert router.global_counts.sum() == 0
    router.eval()  # eval: local f, nothing accumulated
    local = router(b)
    f_local = torch.tensor([0.0, 0.5, 0.5, 0.0])
    torch.testing.assert_close(local.aux_losses["load_balance"], 0.01 * 4 * (f_local * b.softmax(-1).mean(0)).sum())
    assert router.global_counts.sum() == 0


@pytest.mark.parametrize("reentrant", [True, False])
def test_global_balance_counts_once_under_checkpoint_recompute(reentrant):
    router = identity_router(4, top_k=1, global_balance=True).train()
    x = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0]], requires_grad=True)
    loss = recompute_aware(checkpoint, router)(lambda t: router(t).aux_loss, x, use_reentrant=reentrant)
    loss.backward()
    assert router.global_counts.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


def test_capacity_earlier_rule_drops_overflow_in_token_order():
    idx = torch.tensor([[0], [0], [0], [1]])
    w = torch.ones(4, 1)
    weight, dropped = apply_capacity(idx, w, num_experts=2, capacity_factor=1.0, rule="ceil", priority="token")
    assert dropped.flatten().tolist() == [False, False, True, False]  # C = ceil(4/2) = 2
    assert weight.flatten().tolist() == [1.0, 1.0, 0.0, 1.0]
    router = identity_router(2, top_k=1, capacity_factor=1.0, capacity_rule="ceil")
    r = router(torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [0, 1.0]]))
    assert r.dropped.flatten().tolist() == [False, False, True, False]
    assert r.expert_weight[2, 0].item() == 0.0
    assert math.isclose(r.expert_weight[0, 0].item(), torch.tensor([1.0, 0]).softmax(0)[0].item(), rel_tol=1e-6)
    # the reference rule keeps at least 4 pairs per expert: nothing is dropped here
    assert not identity_router(2, top_k=1, capacity_factor=1.0)(torch.tensor([[1.0, 0]] * 4)).dropped.any()


def test_gradients_reach_router_through_weights_and_through_losses():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    router = TopKRouter(4, 8, top_k=2, aux_loss_coef=0.0, z_loss_coef=0.0)
    torch.nn.init.normal_(router.weight)
    router(x).expert_weight.sum().backward()  # raw top-K probs depend on W
    assert router.weight.grad.abs().sum() > 0
    router2 = TopKRouter(4, 8, top_k=2, aux_loss_coef=1.0, z_loss_coef=1.0)
    torch.nn.init.normal_(router2.weight)
    for name in ("load_balance", "z"):
        router2.weight.grad = None
        r = router2(x)
        r.aux_losses[name].backward()
        assert router2.weight.grad.abs().sum() > 0, name
