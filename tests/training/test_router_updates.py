"""Router state changes once per optimizer step, over the whole accumulation window, with one all-reduce for all
layers: gradient accumulation 2 over micro-batches of 4 trains exactly like batches of 8."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from hizoo.models import moe
from hizoo.models.lightning import HizooLightningModule
from hizoo.routing import GroupLimitedRouter, TopKRouter

BASE = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            ffn="moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16)


def _fit(model_config: dict, batch_size: int, accumulate: int, steps: int = 3) -> HizooLightningModule:
    """``steps`` optimizer steps over the same 24 sequences in order; returns the trained module."""
    ids = torch.randint(0, 64, (24, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row} for row in ids]
    L.seed_everything(0, verbose=False)
    module = HizooLightningModule(model_config=model_config, lr=1e-2, warmup_steps=1)
    trainer = L.Trainer(max_steps=steps, accumulate_grad_batches=accumulate, gradient_clip_val=1.0, accelerator="cpu",
                        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=batch_size, shuffle=False))
    return module


def test_accumulation_gives_the_bias_and_weights_of_the_full_batch():
    # DeepSeek-V3 loss-free bias (γ large enough to move every step) with the sequence-wise loss, which like CE
    # and the z-loss is a mean over equal micro-batches: accumulation must reproduce the batch of 8 exactly.
    config = {**BASE, "router": "group_limited", "n_groups": 2, "topk_groups": 2, "router_bias_update_rate": 0.05,
              "seq_aux_loss_coef": 0.01, "router_aux_loss_coef": 0.0}
    full = _fit(config, batch_size=8, accumulate=1).model
    accumulated = _fit(config, batch_size=4, accumulate=2).model
    for a, b in zip(full.model.layers, accumulated.model.layers):
        bias = a.ffn.router.expert_bias
        assert bias.abs().sum() > 0  # the bias moved
        torch.testing.assert_close(b.ffn.router.expert_bias, bias, rtol=0, atol=1e-7)
        assert b.ffn.router.step_load.sum() == 0  # nothing left pending after the last step
    for (name, p), q in zip(full.named_parameters(), accumulated.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-4, msg=name)  # Adam amplifies fp noise of ~0 grads
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    full.eval(), accumulated.eval()
    with torch.no_grad():
        torch.testing.assert_close(accumulated(ids, labels=ids).loss, full(ids, labels=ids).loss, rtol=1e-4, atol=1e-5)


def test_global_balance_counts_and_himoe_steps_cover_the_window(monkeypatch):
    seen: list[torch.Tensor] = []
    clear = TopKRouter.end_of_step

    def record(self, *args):
        seen.append(self.global_counts.clone())
        clear(self, *args)

    monkeypatch.setattr(TopKRouter, "end_of_step", record)
    topk = {**BASE, "router": "topk", "router_global_balance": True}
    _fit(topk, batch_size=8, accumulate=1)
    full, seen[:] = list(seen), []
    _fit(topk, batch_size=4, accumulate=2)
    assert len(seen) == len(full) == 3 * 2  # once per optimizer step and layer, not per micro-batch
    for counts in seen:
        assert counts.sum() == 8 * 12 * 2  # every routing slot of the window's 8 sequences
    torch.testing.assert_close(seen[:2], full[:2])  # step 1 (same weights): the counts of the whole batch of 8

    himoe = _fit({**BASE, "router": "himoe", "n_groups": 2}, batch_size=4, accumulate=2)
    assert [layer.ffn.router.step.item() for layer in himoe.model.model.layers] == [3, 3]


def test_update_router_states_reduces_all_layers_in_one_all_reduce(monkeypatch):
    from hizoo import HizooConfig, HizooForCausalLM

    model = HizooForCausalLM(HizooConfig(**{**BASE, "num_hidden_layers": 3, "router": "group_limited", "n_groups": 2,
                                            "topk_groups": 2, "router_bias_update_rate": 0.1})).train()
    model(torch.randint(0, 64, (2, 8)))
    loads = [layer.ffn.router.step_load.clone() for layer in model.model.layers]
    counts = [layer.ffn.router.metric_counts().clone() for layer in model.model.layers]
    calls = []

    def all_reduce(tensor, *args, **kwargs):  # a second rank that saw exactly the same loads
        calls.append(tensor.shape)
        tensor.mul_(2)

    monkeypatch.setattr(moe.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(moe.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(moe.dist, "all_reduce", all_reduce)
    moe.update_router_states(model)
    # one tensor for the three layers: the bias loads [E] and the training-batch metric counts [E + 1] of each
    assert calls == [torch.Size([3 * 8 + 3 * 9])]
    for layer, load in zip(model.model.layers, loads):
        expected = GroupLimitedRouter(8, 32, top_k=2, bias_update_rate=0.1)
        expected.end_of_step(2 * load)
        torch.testing.assert_close(layer.ffn.router.expert_bias, expected.expert_bias)
        assert layer.ffn.router.step_load.sum() == 0
    for layer, c in zip(model.model.layers, counts):
        torch.testing.assert_close(layer.ffn.router.step_counts, 2 * c.double())  # both ranks' counts
        assert layer.ffn.router.metric_counts().sum() == 0  # the next step starts from zero


@pytest.mark.parametrize("router", ["group_limited", "himoe"])
def test_router_state_is_updated_after_the_optimizer_step_not_before_zero_grad(router, monkeypatch):
    """update_router_states runs inside optimizer_step, after optimizer.step(), once per step (2 micro-batches each)."""
    config = {**BASE, "router": router, "n_groups": 2}
    order = []
    real = moe.update_router_states
    monkeypatch.setattr("hizoo.models.lightning.update_router_states", lambda m: (order.append("update"), real(m)))
    original = HizooLightningModule.optimizer_step

    def spy(self, *args, **kwargs):
        order.append("step")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HizooLightningModule, "optimizer_step", spy)
    _fit(config, batch_size=4, accumulate=2, steps=2)
    assert order == ["step", "update", "step", "update"]
