"""Hi-MoE router against the reference code's formulas, written out by hand (the CI counterpart of
bench/reference_himoe.py): EMA over several training steps, corrected probabilities, per-group selection,
combine weights with the expert scale, Switch LB with Σ f = K, z-loss, intra/inter for each ``reg_source``,
capacity drops, and nothing of the state moving in eval."""

import math

import pytest
import torch

from hizoo.routing import HiMoERouter

E, G, KG, D = 6, 2, 2, 5  # 3 experts per group, 2 picked in each: K = 4


def _by_hand(logits, ema, tau, temperature, scale, reg_source, lam1, lam2, lb, zc):
    """Every quantity of one forward, token by token with Python loops (ema is ḡ after this step's update)."""
    T = logits.shape[0]
    corrected = (logits - tau * ema) / temperature
    pi = corrected.softmax(-1)
    raw = logits.softmax(-1)
    idx, weights, selected = [], [], []
    for t in range(T):
        row_idx, row_sel = [], []
        for g in range(G):
            members = list(range(g * E // G, (g + 1) * E // G))
            best = sorted(members, key=lambda e: -pi[t, e].item())[:KG]
            row_idx += best
            row_sel += [pi[t, e].item() for e in best]
        total = sum(row_sel)
        idx.append(row_idx)
        selected.append(row_sel)
        weights.append([s / (total + 1e-10) * scale[e].item() for s, e in zip(row_sel, row_idx)])
    counts = [sum(row.count(e) for row in idx) for e in range(E)]
    f = torch.tensor(counts, dtype=torch.float32) / T  # Σ f = K
    lb_value = E * (f * raw.mean(0)).sum()
    z_value = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / T
    p_intra = raw if reg_source == "raw" else pi
    p_inter = pi if reg_source == "corrected" else raw
    intra = -sum((p_intra[t] ** 2).sum().item() for t in range(T)) / T
    inter = sum(sum(p_inter[t, g * E // G:(g + 1) * E // G].sum().item() ** 2 for g in range(G)) for t in range(T)) / T
    return dict(idx=idx, weight=torch.tensor(weights), lb=lb * lb_value.item(), z=zc * z_value,
                intra=lam1 * intra, inter=lam2 * inter)


@pytest.mark.parametrize("reg_source", ["raw", "selection", "corrected"])
def test_three_training_steps_then_eval_match_the_formulas(reg_source):
    torch.manual_seed(0)
    tau, beta, temperature, lam1, lam2, lb, zc = 0.7, 0.6, 1.5, 0.1, 0.05, 0.01, 0.001
    router = HiMoERouter(E, D, top_k=G * KG, n_groups=G, tau=tau, ema_beta=beta, temperature=temperature,
                         lambda_intra=lam1, lambda_inter=lam2, reg_source=reg_source, aux_loss_coef=lb,
                         z_loss_coef=zc)
    with torch.no_grad():
        router.weight.normal_(0.0, 1.0)
        router.expert_scale.copy_(torch.linspace(0.5, 1.5, E))
    ema = torch.zeros(E)
    batches = [torch.randn(7, D) + step for step in range(3)]  # shifted batches: ḡ moves and matters
    for step, x in enumerate(batches + [torch.randn(5, D)]):
        training = step < 3
        router.train(training)
        logits = x @ router.weight.detach().t()
        if training:
            ema = beta * ema + (1 - beta) * logits.mean(0)  # updated before use (reference order)
        r = router(x)
        want = _by_hand(logits, ema, tau, temperature, router.expert_scale.detach(), reg_source, lam1, lam2, lb, zc)
        torch.testing.assert_close(router.logit_ema, ema)
        torch.testing.assert_close(r.router_logits, logits)
        assert r.expert_idx.tolist() == want["idx"]
        torch.testing.assert_close(r.expert_weight, want["weight"])
        for name in ("lb", "z", "intra", "inter"):
            key = {"lb": "load_balance"}.get(name, name)
            torch.testing.assert_close(r.aux_losses[key].item(), want[name], rtol=1e-5, atol=1e-8)
    assert router.logit_ema.abs().sum() > 0.5  # the EMA is far from 0, so corrected ≠ raw was exercised


def test_selection_source_differs_from_raw_and_corrected_in_the_right_term():
    torch.manual_seed(1)
    x = torch.randn(9, D) + 1.0
    results = {}
    for source in ("raw", "selection", "corrected"):
        router = HiMoERouter(E, D, top_k=4, n_groups=G, tau=1.0, ema_beta=0.0, reg_source=source).train()
        torch.manual_seed(2)
        torch.nn.init.normal_(router.weight)
        results[source] = router(x).aux_losses
    # selection = π in R_intra, softmax(g) in R_inter (the reference's himoe_intra_source="selection")
    torch.testing.assert_close(results["selection"]["inter"], results["raw"]["inter"])
    torch.testing.assert_close(results["selection"]["intra"], results["corrected"]["intra"])
    assert not torch.allclose(results["selection"]["intra"], results["raw"]["intra"])
    assert not torch.allclose(results["selection"]["inter"], results["corrected"]["inter"])
