"""hizoo under transformers' Trainer: gradient accumulation gives the loss and gradient norm of one batch of the
same samples (the Trainer passes `num_items_in_batch` to the forward, which transformers' causal-LM loss uses), and
RouterUpdateCallback advances the router state (loss-free bias, Hi-MoE's λ1 warm-up counter) once per optimizer step.

The cross-entropy is exact for any targets (the group-limited case, which has no router loss, ignores the first
tokens of every third sample, so the micro-batches hold different numbers of targets). The router losses are
per-micro-batch means weighted by each micro-batch's share of the window's targets: exact when every micro-batch
has as many targets (the Hi-MoE case) and when the losses are means over tokens (z-loss, Hi-MoE's intra/inter
terms); the Switch load-balance loss is a product of two batch means, not the average of its micro-batch values
(set to 0 here), and Hi-MoE's EMA centring is off (τ = 0) because the EMA moves once per micro-batch forward."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hizoo import HizooConfig, HizooForCausalLM, RouterUpdateCallback

SMALL = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=32, ffn="moe", num_experts=8, moe_intermediate_size=16, experts_backend="eager",
             router_aux_loss_coef=0.0, router_z_loss_coef=0.01)
ROUTERS = {
    "himoe": dict(router="himoe", n_groups=2, num_experts_per_tok=4, himoe_tau=0.0, himoe_lambda_intra=0.05,
                  himoe_lambda_inter=0.05, himoe_intra_warmup_steps=4),
    "group_limited": dict(router="group_limited", n_groups=4, topk_groups=2, num_experts_per_tok=2,
                          router_bias_update_rate=0.01),
}
STEPS = 3


class _Data(torch.utils.data.Dataset):
    def __init__(self, equal_targets: bool, n: int = 4 * STEPS):
        g = torch.Generator().manual_seed(5)
        self.ids = torch.randint(0, 61, (n, 12), generator=g)
        self.labels = self.ids.clone()
        if equal_targets:
            self.labels[:, -2:] = -100
        else:  # unequal target counts per sample: the loss must weight by targets
            self.labels[::3, :4] = -100

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _train(tmp_path, router: str, batch: int, accumulation: int):
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**SMALL, **ROUTERS[router]))
    callback = RouterUpdateCallback()
    args = TrainingArguments(output_dir=str(tmp_path / f"{batch}x{accumulation}"), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accumulation, max_steps=STEPS, learning_rate=0.5, optim="sgd",
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0,
                             dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=_Data(equal_targets=router == "himoe"), callbacks=[callback])
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return model, callback, logs


@pytest.mark.slow  # transformers' Trainer trains twice
@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_accumulation_equals_one_large_batch_and_router_state_moves_once_per_step(tmp_path, router):
    accumulated, callback, logs_acc = _train(tmp_path, router, batch=1, accumulation=4)
    single, _, logs_one = _train(tmp_path, router, batch=4, accumulation=1)
    assert callback.updates == STEPS  # on_step_end: once per optimizer step, not per micro-batch
    assert len(logs_acc) == len(logs_one) == STEPS
    for a, b in zip(logs_acc, logs_one):  # before the fix: 4x the loss and the gradient norm
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    for (name, p), q in zip(accumulated.named_parameters(), single.parameters()):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4, msg=name)

    routers = [layer.ffn.router for layer in accumulated.model.layers]
    if router == "himoe":
        assert all(int(r.step) == STEPS for r in routers)  # λ1 warm-up counts optimizer steps
    else:
        for r, r_one in zip(routers, (layer.ffn.router for layer in single.model.layers)):
            bias = r.expert_bias
            assert bias.abs().max() > 0  # it moved ...
            assert bias.abs().max() <= STEPS * 0.01 + 1e-7  # ... by one step of γ per optimizer step at most
            torch.testing.assert_close(bias, r_one.expert_bias)  # loads summed over the window = one batch's


def test_the_trainer_passes_num_items_in_batch_to_hizoo():
    model = HizooForCausalLM(HizooConfig(**SMALL, **ROUTERS["himoe"]))
    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args)
    assert trainer.model_accepts_loss_kwargs  # so the Trainer does not divide the loss a second time
    assert trainer._loss_shifts_labels  # and counts targets as the causal-LM loss does (labels[..., 1:])
