"""A converted OLMoE reports transformers' losses: the load-balancing value of ``OlmoeForCausalLM``
(``output_router_logits=True``, Switch loss with Σ f = K) times the coefficient, and the same total loss."""

import pytest
import torch
from transformers import OlmoeConfig, OlmoeForCausalLM
from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func

from hizoo import HizooForCausalLM


def _olmoe(num_hidden_layers: int, **overrides) -> OlmoeForCausalLM:
    """A small OLMoE with weights large enough that routing is far from uniform (std 0.1, random norm gains)."""
    torch.manual_seed(0)
    kwargs = dict(vocab_size=96, hidden_size=32, intermediate_size=16, num_hidden_layers=num_hidden_layers,
                  num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=3,
                  max_position_embeddings=64, router_aux_loss_coef=0.02, pad_token_id=0, eos_token_id=1)
    kwargs.update(overrides)
    model = OlmoeForCausalLM(OlmoeConfig(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p)) if p.ndim == 1 else p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_one_layer_load_balance_and_loss_equal_transformers(norm_topk_prob):
    olmoe = _olmoe(1, norm_topk_prob=norm_topk_prob)
    ours = HizooForCausalLM.from_olmoe(olmoe)
    assert ours.config.router_z_loss_coef == 0.0  # transformers' OLMoE has no z-loss
    ids = torch.randint(0, 96, (3, 17))
    with torch.no_grad():
        ref = olmoe(ids, labels=ids, output_router_logits=True)
        got = ours(ids, labels=ids, output_router_logits=True)  # as in transformers: requested, or training
    assert ref.aux_loss > 3.0  # Σ f = K = 3: the balanced value is K, not 1 (the normalization under test)
    torch.testing.assert_close(got.aux_losses["load_balance"], 0.02 * ref.aux_loss, atol=1e-6, rtol=1e-5)
    assert set(got.aux_losses) == {"load_balance"}
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-5, rtol=1e-5)


def test_layers_sum_their_own_losses_where_transformers_pools_them():
    """hizoo (like the Hi-MoE reference) sums the per-layer Switch losses; transformers pools f and P over the
    layers' tokens before the product. Each layer's term equals transformers' loss of that layer alone."""
    olmoe = _olmoe(2)
    ours = HizooForCausalLM.from_olmoe(olmoe)
    ids = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        logits = olmoe(ids, output_router_logits=True).router_logits
        got = ours(ids, labels=ids)
    per_layer = [load_balancing_loss_func((g,), 8, 3) for g in logits]
    torch.testing.assert_close(got.aux_losses["load_balance"], 0.02 * sum(per_layer), atol=1e-6, rtol=1e-5)
    for r, expected in zip(got.routing, per_layer):
        torch.testing.assert_close(r.aux_losses["load_balance"], 0.02 * expected, atol=1e-6, rtol=1e-5)
