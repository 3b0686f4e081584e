"""models/sinkhorn.py: Sinkhorn–Knopp in the official stream-collapse code's order against that code's log-domain
iteration and hand-computed values, its analytic backward against autograd and gradcheck, and the mHC-lite
permutation mixture against an explicit sum over itertools' permutations."""

import itertools

import pytest
import torch

from hizoo.models.sinkhorn import permutation_matrices, permutation_mixture, sinkhorn_log

# ---------------------------------------------------------------------------------------------- Sinkhorn


def log_domain_sinkhorn(logits, iters):
    """The official code's sinkhorn_knopps: logsumexp over dim −2 (inputs), then dim −1 (outputs)."""
    for _ in range(iters):
        logits = logits - torch.logsumexp(logits, dim=-2, keepdim=True)
        logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return logits.exp()


def test_sinkhorn_order_by_hand():
    """exp(L) = [[1, 2], [3, 4]] (rows: input i, columns: output j), one iteration. Inputs first: columns
    [1, 3]/4 and [2, 4]/6, then rows: [3/7, 4/7], [9/17, 8/17]. (Outputs first would give [[7/16, 7/13], ...].)"""
    L = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).log()
    expected = torch.tensor([[3 / 7, 4 / 7], [9 / 17, 8 / 17]])
    torch.testing.assert_close(sinkhorn_log(L, 1), expected)
    torch.testing.assert_close(log_domain_sinkhorn(L, 1), expected)


@pytest.mark.parametrize("std", [0.5, 3.0, 10.0, 20.0])
def test_sinkhorn_equals_the_log_domain_reference_in_fp32(std):
    """Same order, 20 iterations, fp32 against the log domain in fp64: within 1e-6 wherever a matrix's logit
    spread (max − min) is at most 80, the documented range (std 20 on 16 entries: about 3000 of 4096)."""
    logits = torch.randn(4096, 4, 4, generator=torch.Generator().manual_seed(0)) * std
    ours = sinkhorn_log(logits, 20)
    err = (ours - log_domain_sinkhorn(logits.double(), 20).float()).abs().amax((-2, -1))
    in_range = logits.amax((-2, -1)) - logits.amin((-2, -1)) <= 80
    assert in_range.sum() > 3000 and err[in_range].max() < 1e-6
    torch.testing.assert_close(ours.sum(-1), torch.ones(4096, 4), atol=1e-6, rtol=0)  # the last axis is exact


def test_sinkhorn_departs_from_the_log_domain_only_past_spreads_of_80():
    """The documented limit, so that it cannot silently move: with std 30 some matrices past a spread of 80
    differ by more than 1e-3, none within it by more than 1e-6."""
    logits = torch.randn(4096, 4, 4, generator=torch.Generator().manual_seed(0)) * 30
    err = (sinkhorn_log(logits, 20) - log_domain_sinkhorn(logits.double(), 20).float()).abs().amax((-2, -1))
    in_range = logits.amax((-2, -1)) - logits.amin((-2, -1)) <= 80
    assert err[~in_range].max() > 1e-3 and err[in_range].max() < 1e-6


def test_sinkhorn_analytic_backward_in_fp64():
    logits = (torch.randn(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sinkhorn_log(x, 5), (logits,))
    # and the gradient equals autograd through the official log-domain iteration
    w = torch.randn(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (g_ours,) = torch.autograd.grad((sinkhorn_log(logits, 20) * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((log_domain_sinkhorn(logits, 20) * w).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-10, rtol=1e-8)


def test_sinkhorn_is_doubly_stochastic_for_random_logits():
    logits = torch.randn(4096, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    m = sinkhorn_log(logits.bfloat16(), 20)
    assert m.dtype == torch.float32 and (m > 0).all()  # fp32 for half-precision logits
    m = sinkhorn_log(logits, 20)
    torch.testing.assert_close(m.sum(-1), torch.ones(4096, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(m.sum(-2), torch.ones(4096, 4), atol=1e-5, rtol=0)


def test_sinkhorn_on_wide_logits_is_exact_on_the_last_axis_and_converges_on_the_other():
    """20 iterations do not fully converge when logits spread over ±10: the last normalization (over outputs j,
    the official order) is exact, the input axis approaches 1 as iterations grow (and the -8/0 init is
    converged at once)."""
    logits = torch.randn(1024, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    errors = []
    for iters in (5, 20, 200):
        m = sinkhorn_log(logits, iters)
        torch.testing.assert_close(m.sum(-1), torch.ones(1024, 4), atol=1e-5, rtol=0)
        errors.append((m.sum(-2) - 1).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2
    init = torch.full((4, 4), -8.0).fill_diagonal_(0.0)
    torch.testing.assert_close(sinkhorn_log(init, 20).sum(-2), torch.ones(4), atol=1e-6, rtol=0)


def test_sinkhorn_matches_the_log_domain_reference_and_its_gradient():
    logits = (torch.randn(2, 5, 4, 4, dtype=torch.float64) * 2).requires_grad_()
    torch.testing.assert_close(sinkhorn_log(logits, 20), log_domain_sinkhorn(logits, 20))
    assert torch.autograd.gradcheck(lambda x: sinkhorn_log(x, 6), (logits,))
    wide = torch.tensor([[0.0, -200.0], [-200.0, 0.0]])  # far past the clamp: still finite, still ≈ I
    assert torch.allclose(sinkhorn_log(wide, 20), torch.eye(2))


def test_sinkhorn_keeps_fp64_and_any_leading_dimensions():
    logits = torch.randn(2, 3, 5, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    m = sinkhorn_log(logits, 7)
    assert m.dtype == torch.float64 and m.shape == logits.shape
    torch.testing.assert_close(m[1, 2, 3], sinkhorn_log(logits[1, 2, 3], 7))  # each matrix on its own
    torch.testing.assert_close(m, log_domain_sinkhorn(logits, 7))


# ---------------------------------------------------------------------------------------------- mHC-lite


def test_permutation_matrices_are_itertools_permutations_identity_first():
    for n in (1, 2, 3, 4):
        perms = permutation_matrices(n)
        expected = [[[float(perm[i] == j) for j in range(n)] for i in range(n)]
                    for perm in itertools.permutations(range(n))]
        assert perms.tolist() == expected  # P_r[i, j] = 1 iff j = perm_r(i); row 0 is the identity


def test_permutation_mixture_is_the_softmax_weighted_sum_of_permutations():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 24, generator=g) * 2  # n = 4
    weights = logits.softmax(-1)
    expected = torch.zeros(5, 4, 4)
    for r, perm in enumerate(itertools.permutations(range(4))):
        for i in range(4):
            expected[:, i, perm[i]] += weights[:, r]
    torch.testing.assert_close(permutation_mixture(logits), expected)
    two = permutation_mixture(torch.tensor([0.0, 3.0]))  # n = 2 by hand: [[w0, w1], [w1, w0]]
    w0, w1 = torch.tensor([0.0, 3.0]).softmax(-1).tolist()
    torch.testing.assert_close(two, torch.tensor([[w0, w1], [w1, w0]]))


def test_permutation_mixture_is_doubly_stochastic_and_identity_first():
    perms = permutation_matrices(3)
    assert perms.shape == (6, 3, 3) and torch.equal(perms[0], torch.eye(3))
    m = permutation_mixture(torch.randn(10, 6) * 4)
    torch.testing.assert_close(m.sum(-1), torch.ones(10, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(m.sum(-2), torch.ones(10, 3), atol=1e-6, rtol=0)
