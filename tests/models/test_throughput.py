"""Model FLOPs per token (PaLM, Appendix B) against a hand count and torch's FLOP counter, at the training sequence
length; tokens/s and MFU timed over the optimizer step's own work, without validation or checkpoint writes."""

import time

import lightning as L
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.lightning import HizooLightningModule

DENSE = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, tie_word_embeddings=False, max_position_embeddings=2048)


def test_flops_per_token_by_hand():
    # per layer: q,o 64·16·4 each, k,v 64·16·2 each = 12288; SwiGLU 3·64·128 = 24576; lm_head 100·64 = 6400
    n = 2 * (12288 + 24576) + 6400
    attention = 12 * 2 * 4 * 16 * 32  # 12·L·H·Q·S at S = 32
    assert HizooConfig(**DENSE).flops_per_token(32) == 6 * n + attention == 529920


def test_flops_per_token_match_torch_flop_counter_on_forward_and_backward():
    """torch counts every matmul of one training step (the math attention kernel shows QKᵀ and AV as bmm)."""
    config = HizooConfig(**DENSE)
    model = HizooForCausalLM(config)
    ids = torch.randint(0, 100, (3, 32))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, labels=ids).loss.backward()
    assert counter.get_total_flops() / ids.numel() == config.flops_per_token(32)


def test_attention_flops_follow_the_training_length_not_max_position_embeddings():
    short, long_context = HizooConfig(**DENSE), HizooConfig(**{**DENSE, "max_position_embeddings": 8192})
    assert short.flops_per_token(128) == long_context.flops_per_token(128)
    assert short.flops_per_token(256) - short.flops_per_token(128) == 12 * 2 * 4 * 16 * 128


class _Sleeper(L.Callback):
    """Sleeps where checkpoint writes (end of a batch) and validation happen."""

    def on_train_batch_end(self, trainer, *args):
        time.sleep(0.3)

    def on_validation_end(self, trainer, pl_module):
        time.sleep(0.3)


class _StepClock(L.Callback):
    """Times each optimizer step independently (from each micro-batch's start to its end, before the sleeper)
    and reads the step time the module logged (tokens / logged tokens_per_s)."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.measured: list[float] = []
        self.logged: list[float] = []
        self._busy, self._step = 0.0, 0

    def on_train_batch_start(self, trainer, *args):
        self._read(trainer)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, *args):
        self._busy += time.perf_counter() - self._started
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            self.measured.append(self._busy)
            self._busy = 0.0

    def on_train_end(self, trainer, pl_module):
        self._read(trainer)

    def _read(self, trainer):
        value = trainer.callback_metrics.get("train/tokens_per_s")
        if value is not None and len(self.logged) < len(self.measured):
            self.logged.append(self.tokens_per_step / float(value))


@pytest.mark.slow  # a Lightning training run
def test_throughput_excludes_validation_and_checkpoint_time():
    ids = torch.randint(0, 100, (16, 16))
    data = [{"input_ids": row} for row in ids]
    module = HizooLightningModule(model_config={**DENSE, "max_position_embeddings": 64}, peak_tflops=1.0)
    clock = _StepClock(tokens_per_step=2 * 2 * 16)  # two micro-batches of 2 sequences of 16 tokens
    trainer = L.Trainer(max_steps=3, val_check_interval=1, limit_val_batches=1, num_sanity_val_steps=0,
                        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=2,
                        callbacks=[clock, _Sleeper()])
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=2),
                val_dataloaders=DataLoader(data[:2], batch_size=2))
    assert len(clock.logged) == len(clock.measured) == 3
    for logged, measured in zip(clock.logged, clock.measured):
        # the logged time lies inside the independently measured compute; counting the sleeps (two batch ends
        # and a validation per step, 0.3 s each) would add 0.9 s
        assert 0 < logged <= measured + 1e-3, (clock.logged, clock.measured)
    mfu = float(trainer.callback_metrics["train/mfu"])
    tflops = float(trainer.callback_metrics["train/tflops"])
    tokens_per_s = float(trainer.callback_metrics["train/tokens_per_s"])
    flops = module.model.config.flops_per_token(16)
    assert abs(tflops - tokens_per_s * flops / 1e12) <= 1e-6 * tflops and abs(mfu - tflops) <= 1e-6 * tflops
