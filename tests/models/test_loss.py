"""The loss follows OLMoE's convention and transformers' causal-LM loss (HizooForCausalLM.forward), and
models/loss.py's ``next_token_cross_entropy`` (the CE of logits formed outside the forward) is the same loss.

- `loss` is the cross-entropy alone in evaluation (exp(loss) is the perplexity) and adds the router losses when
  training or when `output_router_logits=True`; `ce_loss`, `aux_loss` and each term of `aux_losses` come back
  separately, so nothing needs to subtract.
- A converted OLMoE gives exactly transformers' `OlmoeForCausalLM` loss in evaluation, and in training with
  `output_router_logits=True` (there both add the Switch load-balance loss).
- `shift_labels`, `ignore_index` and `num_items_in_batch` mean what they mean in transformers' `ForCausalLMLoss`.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import OlmoeConfig, OlmoeForCausalLM

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.loss import next_token_cross_entropy

MOE = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
           ffn="moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, experts_backend="eager",
           router="himoe", n_groups=2, himoe_lambda_intra=0.05, himoe_lambda_inter=0.05)


def _ce(logits, ids):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def test_eval_loss_is_the_cross_entropy_and_training_adds_every_router_loss():
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**MOE))
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        evaluated = model.eval()(ids, labels=ids)
        requested = model(ids, labels=ids, output_router_logits=True)
        trained = model.train()(ids, labels=ids)
    assert set(evaluated.aux_losses) == {"load_balance", "z", "intra", "inter"}
    torch.testing.assert_close(evaluated.loss, _ce(evaluated.logits, ids))
    assert evaluated.ce_loss is evaluated.loss and evaluated.router_logits is None
    total = sum(evaluated.aux_losses.values())
    torch.testing.assert_close(evaluated.aux_loss, total)
    assert abs(evaluated.aux_loss) > 1e-3  # computed (and reported) in eval, but not in the loss
    torch.testing.assert_close(requested.loss, evaluated.ce_loss + evaluated.aux_loss)
    assert len(requested.router_logits) == 2
    torch.testing.assert_close(trained.loss, trained.ce_loss + sum(trained.aux_losses.values()))


def test_config_output_router_logits_adds_the_router_losses_in_eval():
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**MOE, output_router_logits=True)).eval()
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        out = model(ids, labels=ids)
        opted_out = model(ids, labels=ids, output_router_logits=False)
    torch.testing.assert_close(out.loss, out.ce_loss + out.aux_loss)
    torch.testing.assert_close(opted_out.loss, out.ce_loss)


def _olmoe(num_hidden_layers: int) -> OlmoeForCausalLM:
    torch.manual_seed(0)
    model = OlmoeForCausalLM(OlmoeConfig(
        vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=num_hidden_layers,
        num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
        max_position_embeddings=64, router_aux_loss_coef=0.01, pad_token_id=0, eos_token_id=1))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.1)
    return model


def test_converted_olmoe_eval_loss_is_transformers_loss_and_its_perplexity():
    olmoe = _olmoe(num_hidden_layers=2).eval()
    ours = HizooForCausalLM.from_olmoe(olmoe, router_z_loss_coef=1e-3)  # with a z-loss: still CE only in eval
    ids = torch.randint(0, 128, (3, 16))
    with torch.no_grad():
        ref = olmoe(ids, labels=ids).loss
        got = ours(ids, labels=ids)
    torch.testing.assert_close(got.loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.exp(got.loss), torch.exp(_ce(got.logits, ids)))
    assert got.aux_losses["z"] > 0  # OLMoE's z-loss is computed, reported and kept out of the eval loss


@pytest.mark.parametrize("training", [False, True])
def test_converted_olmoe_loss_with_router_losses_is_transformers_loss(training):
    """One MoE layer: transformers pools f and P over all layers before their product, hizoo sums the per-layer
    losses; the two agree for a single layer."""
    olmoe = _olmoe(num_hidden_layers=1).train(training)
    ours = HizooForCausalLM.from_olmoe(olmoe, router_z_loss_coef=0.0).train(training)  # OLMoE's loss has no z-loss
    ids = torch.randint(0, 128, (3, 16))
    with torch.no_grad():
        ref = olmoe(ids, labels=ids, output_router_logits=True)
        got = ours(ids, labels=ids, output_router_logits=True)
    torch.testing.assert_close(got.ce_loss, olmoe(ids, labels=ids).loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.aux_loss, 0.01 * ref.aux_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-5, rtol=1e-5)


def test_shift_labels_replace_labels_and_ignore_index_is_honoured():
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**MOE)).eval()
    ids = torch.randint(0, 97, (2, 9))
    shifted = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)  # what sequence parallelism passes
    with torch.no_grad():
        by_labels = model(ids, labels=ids)
        by_shift = model(ids, shift_labels=shifted)
        labels = ids.clone()
        labels[:, 4:] = 96
        ignored = model(ids, labels=labels, ignore_index=96)
    torch.testing.assert_close(by_shift.loss, by_labels.loss)
    expected = F.cross_entropy(ignored.logits[:, :3].flatten(0, 1), ids[:, 1:4].flatten())
    torch.testing.assert_close(ignored.loss, expected)


def test_num_items_in_batch_sums_the_ce_and_weights_the_router_losses_by_this_batchs_targets():
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**MOE)).train()
    ids = torch.randint(0, 97, (2, 9))
    labels = ids.clone()
    labels[0, :5] = -100  # 4 + 8 = 12 targets after the shift
    out = model(ids, labels=labels, num_items_in_batch=torch.tensor(44))
    targets = labels[:, 1:]
    ce_sum = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="sum")
    torch.testing.assert_close(out.ce_loss, ce_sum / 44)
    torch.testing.assert_close(out.loss, ce_sum / 44 + (12 / 44) * out.aux_loss)
    # a micro-batch of the window without any target is legitimate: its CE sum is 0
    empty = model(ids, labels=torch.full_like(ids, -100), num_items_in_batch=44)
    assert empty.ce_loss == 0 and empty.loss == 0


def test_next_token_cross_entropy_is_the_shifted_cross_entropy_and_the_models_ce_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, dtype=torch.float64)
    ids = torch.randint(0, 11, (3, 7))
    flat_logits, targets = logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1)  # position s predicts token s + 1
    torch.testing.assert_close(next_token_cross_entropy(logits, ids), F.cross_entropy(flat_logits.float(), targets))
    torch.testing.assert_close(next_token_cross_entropy(logits, ids, reduction="sum"),
                               F.cross_entropy(flat_logits.float(), targets, reduction="sum"))
    masked = ids.clone()
    masked[:, 3:] = -100  # positions 0..1 keep a target
    torch.testing.assert_close(next_token_cross_entropy(logits, masked),
                               F.cross_entropy(logits[:, :2].reshape(-1, 11).float(), ids[:, 1:3].reshape(-1)))
    with pytest.raises(ValueError, match="reduction='none'"):
        next_token_cross_entropy(logits, ids, reduction="none")
    model = HizooForCausalLM(HizooConfig(**MOE)).eval()
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        out = model(ids, labels=ids)
    torch.testing.assert_close(next_token_cross_entropy(out.logits, ids), out.ce_loss)
