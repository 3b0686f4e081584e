"""routing/losses.py: each router loss against an independent computation (transformers' OLMoE loss, loops over
tokens and sequences, the ST-MoE formula written out)."""

import math

import pytest
import torch
from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func

from hizoo.routing.losses import expert_fraction, sequence_balance_loss, switch_load_balance_loss, z_loss


def test_expert_fraction_counts_tokens_so_it_sums_to_k():
    idx = torch.tensor([[0, 3], [2, 3], [1, 0]])  # expert 0 twice, 1 once, 2 once, 3 twice over T = 3 tokens
    f = expert_fraction(idx, 5)
    torch.testing.assert_close(f, torch.tensor([2.0, 1.0, 1.0, 2.0, 0.0]) / 3)
    assert f.dtype == torch.float32 and float(f.sum()) == pytest.approx(2.0)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_switch_load_balance_equals_transformers_load_balancing_loss_func(top_k):
    torch.manual_seed(top_k)
    logits = torch.randn(23, 8)  # [T, E]
    probs = logits.softmax(-1)
    idx = probs.topk(top_k, dim=-1).indices
    ours = switch_load_balance_loss(probs, idx, 8)
    theirs = load_balancing_loss_func((logits,), 8, top_k)  # OLMoE's: E · Σ_i f_i P_i, f over tokens
    torch.testing.assert_close(ours, theirs)


def test_switch_load_balance_is_k_for_a_uniform_router_and_takes_a_given_fraction():
    probs = torch.full((6, 4), 0.25)
    idx = torch.tensor([[0, 1], [2, 3]] * 3)
    torch.testing.assert_close(switch_load_balance_loss(probs, idx, 4), torch.tensor(2.0))
    fraction = torch.tensor([1.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(switch_load_balance_loss(probs, idx, 4, fraction), torch.tensor(4 * 0.25 * 2.0))


def test_sequence_balance_loss_matches_a_loop_over_sequences_and_tokens():
    torch.manual_seed(0)
    B, S, E, K = 3, 5, 6, 2
    scores = torch.rand(B * S, E)
    idx = scores.topk(K, dim=-1).indices
    per_sequence = []
    for b in range(B):  # DeepSeek-V3 Eqs. 17-20 written out
        rows = range(b * S, (b + 1) * S)
        total = 0.0
        for i in range(E):
            f_i = E / (K * S) * sum(int(i in idx[t].tolist()) for t in rows)
            P_i = sum(float(scores[t, i] / scores[t].sum()) for t in rows) / S
            total += f_i * P_i
        per_sequence.append(total)
    assert float(sequence_balance_loss(scores, idx, E, S)) == pytest.approx(sum(per_sequence) / B, rel=1e-6)
    with pytest.raises(ValueError, match="seq_len=4 must divide"):
        sequence_balance_loss(scores, idx, E, 4)


def test_z_loss_is_the_mean_squared_log_partition_function():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-3.0, 4.0]])
    by_hand = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 3
    assert float(z_loss(logits)) == pytest.approx(by_hand, rel=1e-6)
    assert z_loss(logits.half()).dtype == torch.float32  # computed in fp32 whatever the logits' dtype
