"""GroupLimitedRouter: group-limited selection, unbiased weights, loss-free bias, sequence-wise loss."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from hizoo.routing import GroupLimitedRouter, recompute_aware


def identity_router(E: int, **kwargs) -> GroupLimitedRouter:
    router = GroupLimitedRouter(E, E, **kwargs)
    with torch.no_grad():
        router.weight.copy_(torch.eye(E))
    return router


# 4 groups of 2. Expert 0 has the largest single score but its group's top-2 sum is small.
LOGITS = torch.tensor([[5.0, -5.0, 2.0, 1.0, 1.6, 1.4, 0.0, 0.0]])


def test_group_limited_selection_and_weights():
    router = identity_router(8, top_k=2, n_groups=4, topk_groups=2, routed_scaling_factor=2.5)
    r = router(LOGITS)
    # group scores (sum of top-2 sigmoid): g0 ~1.000, g1 ~1.612, g2 ~1.634, g3 = 1.0 -> keep g1, g2
    assert sorted(r.expert_idx[0].tolist()) == [2, 4]
    s = LOGITS.sigmoid()[0]
    expected = {2: 2.5 * s[2] / (s[2] + s[4]), 4: 2.5 * s[4] / (s[2] + s[4])}
    for k in range(2):
        torch.testing.assert_close(r.expert_weight[0, k], expected[int(r.expert_idx[0, k])])
    # without group limiting expert 0 would win
    assert 0 in identity_router(8, top_k=2, n_groups=4, topk_groups=4)(LOGITS).expert_idx[0].tolist()


def test_bias_changes_selection_not_weights():
    router = identity_router(8, top_k=2, n_groups=1, topk_groups=1)
    router.expert_bias[7] = 10.0
    r = router(LOGITS)
    assert 7 in r.expert_idx[0].tolist() and 0 in r.expert_idx[0].tolist()
    s = LOGITS.sigmoid()[0]
    k7 = r.expert_idx[0].tolist().index(7)
    torch.testing.assert_close(r.expert_weight[0, k7], s[7] / (s[0] + s[7]))


def test_end_of_step_applies_sign_update_once_from_training_loads():
    router = identity_router(4, top_k=1, bias_update_rate=0.1).train()
    x = torch.tensor([[5.0, 0, 0, 0], [5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 0, 5.0]])
    router(x)  # loads [2, 1, 0, 1], mean 1
    router.eval()
    router(x)  # eval forwards do not count
    router.end_of_step()
    torch.testing.assert_close(router.expert_bias, torch.tensor([-0.1, 0.0, 0.1, 0.0]))
    assert router.step_load.sum() == 0
    router.end_of_step()  # a step without training forwards leaves b alone
    torch.testing.assert_close(router.expert_bias, torch.tensor([-0.1, 0.0, 0.1, 0.0]))


@pytest.mark.parametrize("reentrant", [True, False])
def test_loads_counted_once_under_checkpoint_recompute(reentrant):
    router = identity_router(4, top_k=1).train()
    x = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0]], requires_grad=True)
    # the seq-balance loss needs every output of the router, so the replay runs the whole forward
    router.seq_aux_loss_coef = 1.0
    loss = recompute_aware(checkpoint, router)(lambda t: router(t, seq_len=2).aux_loss, x, use_reentrant=reentrant)
    loss.backward()
    assert router.step_load.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert not router.recomputing  # the mark ends with the replay


def test_loss_free_bias_balances_skewed_input():
    torch.manual_seed(0)
    E, d = 8, 16
    router = GroupLimitedRouter(E, d, top_k=2, bias_update_rate=0.02).train()
    with torch.no_grad():
        router.weight.normal_(0, 0.3)
        router.weight[:, 0] = torch.linspace(2.0, -2.0, E)  # strong preference for low expert ids
    x = torch.randn(256, d)
    x[:, 0] = 1.0

    def max_violation() -> float:
        load = torch.bincount(router(x).expert_idx.flatten(), minlength=E).float()
        return float((load.max() - load.mean()) / load.mean())

    before = max_violation()
    router.step_load.zero_()
    for _ in range(150):
        router(x)
        router.end_of_step()
    after = max_violation()
    assert before > 1.5 and after < 0.3, (before, after)


def test_sequence_balance_loss_is_alpha_for_uniform_scores_and_needs_seq_len():
    router = GroupLimitedRouter(8, 4, top_k=2, n_groups=2, topk_groups=2, seq_aux_loss_coef=1e-2)
    torch.nn.init.zeros_(router.weight)  # all scores equal: Σ_i f_i P_i = 1 for every sequence
    r = router(torch.randn(6, 4), seq_len=3)
    torch.testing.assert_close(r.aux_losses["seq_balance"], torch.tensor(1e-2))
    with pytest.raises(ValueError, match="seq_len"):
        router(torch.randn(6, 4))


def test_gradients_reach_router_weight():
    torch.manual_seed(0)
    router = GroupLimitedRouter(8, 4, top_k=2, n_groups=2, topk_groups=1, seq_aux_loss_coef=1.0)
    torch.nn.init.normal_(router.weight)
    x = torch.randn(6, 4)
    r = router(x, seq_len=3)
    (r.expert_weight[:, 0]).sum().backward()  # normalized weights still depend on W through the ratio
    assert router.weight.grad.abs().sum() > 0
    router.weight.grad = None
    router(x, seq_len=3).aux_losses["seq_balance"].backward()
    assert router.weight.grad.abs().sum() > 0
