"""HizooLightningModule: HizooForCausalLM trained with CE + the routers' aux losses, AdamW, warm-up + cosine;
router state updated once per optimizer step; throughput and MFU over the step's own compute time."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch

from .configuration import HizooConfig
from .modeling import HizooForCausalLM
from .moe import update_router_states


class HizooLightningModule(L.LightningModule):
    """``model_config``: HizooConfig fields (``vocab_size`` is taken from the data module's tokenizer when one is
    attached). AdamW decays only weight matrices (≥2-D) outside the residual-stream connections; norms, biases,
    router scales and HC/mHC coefficients are not decayed."""

    def __init__(self, model_config: dict[str, int | float | bool | str | None] | None = None, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 peak_tflops: float | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model_config = dict(model_config or {})
        self.model: HizooForCausalLM | None = None
        self._window = StepTimer()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        fields = dict(self.model_config)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
            fields["vocab_size"] = len(datamodule.tokenizer)
        self.model = HizooForCausalLM(HizooConfig(**fields))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ids = batch["input_ids"]
        out = self.model(ids, labels=ids)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(
                f"non-finite training loss {out.loss.item()} at step {self.global_step}; the last checkpoint is kept")
        ce = out.loss - (out.aux_loss if out.aux_loss is not None else 0.0)
        self.log("train/loss", out.loss, prog_bar=True)
        self.log("train/ce", ce)
        for name, value in (out.aux_losses or {}).items():
            self.log(f"train/aux_{name}", value)
        self._window.add_tokens(ids.numel(), ids.numel() * training_flops_per_token(self.model.config, ids.shape[1]))
        return out.loss

    # Throughput counts the time of the optimizer step's own work: every micro-batch from its start hook to the
    # end of its backward, plus the optimizer step. Validation, checkpoint writes, data loading and the
    # callbacks that run between batches are not in it.
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._window.start()

    def on_after_backward(self) -> None:
        self._window.lap()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)  # runs the window's last forward/backward (closure), then the step
        update_router_states(self.model)  # once per optimizer step, over the whole accumulation window
        self._window.lap()
        self._window.finish_step()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        done = self._window.take_finished()
        if done is None:
            return
        tokens, flops, seconds = done
        tokens_per_s = tokens / seconds
        tflops = flops / seconds / 1e12  # per device: tokens and time are this process's
        self.log("train/tokens_per_s", tokens_per_s)
        self.log("train/tflops", tflops)
        if self.hparams.peak_tflops:  # model FLOPs utilization (PaLM, Appendix B)
            self.log("train/mfu", tflops / self.hparams.peak_tflops)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        ids = batch["input_ids"]
        out = self.model(ids, labels=ids)
        ce = out.loss - (out.aux_loss if out.aux_loss is not None else 0.0)
        self.log("val/ce", ce, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        ce = self.trainer.callback_metrics.get("val/ce")
        if ce is not None:
            self.log("val/ppl", torch.exp(ce), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            in_connection = "_conn." in name or ".expand." in name
            (decay if p.ndim >= 2 and not in_connection else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, betas=self.hparams.betas)
        total = max(self.trainer.estimated_stepping_batches, 1)
        warmup, floor = self.hparams.warmup_steps, self.hparams.min_lr_ratio

        def lr_factor(step: int) -> float:  # linear warm-up, then cosine down to min_lr_ratio
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hizoo_config"] = self.model.config.to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run continues the checkpoint's run: its model and optimizer settings must be this run's.
        Lightning would otherwise mix them silently (weights, the optimizer's lr/betas/weight decay and the
        router state come from the checkpoint; loss coefficients and the schedule from the command line)."""
        changed = _settings_changed(checkpoint, dict(self.hparams), self.model.config.to_dict() if self.model else None)
        if changed:
            path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
            raise ValueError(
                f"resuming from {path or 'the checkpoint'} with settings that differ from the checkpoint's run: "
                + "; ".join(f"{name}: {old!r} in the checkpoint, {new!r} now" for name, old, new in changed)
                + ". A resumed run continues the same run: drop these overrides, or start a new run in another "
                "folder (--trainer.default_root_dir)")


# Settings that only change how the same computation runs or is reported: a resumed run may change them.
RESUME_MAY_CHANGE = {"peak_tflops", "model_config.experts_backend", "model_config.hc_recompute"}
# Bookkeeping of transformers' PreTrainedConfig, not model settings.
_CONFIG_BOOKKEEPING = {"_name_or_path", "architectures", "dtype", "torch_dtype", "transformers_version", "use_cache",
                       "output_attentions", "output_hidden_states", "return_dict"}


def _settings_changed(checkpoint: dict, hparams: dict, model_config: dict | None) -> list[tuple[str, object, object]]:
    """(name, checkpoint value, current value) for every setting that differs: the LightningModule's arguments
    and the full model config (with its defaults, so a field given on one side only still counts)."""
    saved = dict(checkpoint.get("hyper_parameters") or {})
    changed = []
    for name in sorted((saved.keys() | hparams.keys()) - {"model_config"} - RESUME_MAY_CHANGE):
        old, new = saved.get(name), hparams.get(name)
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            old, new = list(old), list(new)
        if old != new:
            changed.append((f"model.{name}", old, new))
    saved_config = checkpoint.get("hizoo_config")
    if saved_config is not None and model_config is not None:
        for name in sorted((saved_config.keys() | model_config.keys()) - _CONFIG_BOOKKEEPING):
            if f"model_config.{name}" in RESUME_MAY_CHANGE:
                continue
            old, new = saved_config.get(name), model_config.get(name)
            if old != new:
                changed.append((f"model_config.{name}", old, new))
    return changed


class StepTimer:
    """Tokens, model FLOPs and busy seconds of the current optimizer step (all micro-batches of its window)."""

    def __init__(self):
        self._started: float | None = None
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0
        self._finished: tuple[int, float, float] | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def lap(self) -> None:
        """Add the time since ``start`` (or the previous lap) to the step."""
        now = time.perf_counter()
        if self._started is not None:
            self.seconds += now - self._started
        self._started = now

    def add_tokens(self, tokens: int, flops: float) -> None:
        self.tokens += tokens
        self.flops += flops

    def finish_step(self) -> None:
        if self.tokens and self.seconds > 0:
            self._finished = (self.tokens, self.flops, self.seconds)
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0
        self._started = None

    def take_finished(self) -> tuple[int, float, float] | None:
        """(tokens, FLOPs, seconds) of the step that just finished, once; None between steps."""
        done, self._finished = self._finished, None
        return done


def training_flops_per_token(config: HizooConfig, seq_len: int) -> float:
    """Model FLOPs per trained token, forward + backward (PaLM, Appendix B): 6·N + 12·L·H·Q·S.

    N counts the weights a token is multiplied with: attention projections, the FFN (in MoE layers only the K
    routed experts it goes to, the shared experts and the router), the LM head (the embedding lookup is no
    matmul). 12·L·H·Q·S is attention itself (QKᵀ and AV, 2·2·H·Q·S forward, twice that backward) with H heads of
    width Q over the training sequence length S, counted over the whole sequence as PaLM does (causal masking
    is not discounted). MoE routing overheads (sorting, gathers) and the residual-stream mixing are not counted.
    """
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be a positive int (the training sequence length)")
    d, L = config.hidden_size, config.num_hidden_layers
    attn = d * config.head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    active = config.vocab_size * d  # lm_head (the embedding lookup costs no FLOPs)
    for layer in range(L):
        if config.is_moe_layer(layer):
            routed = config.num_experts_per_tok + config.num_shared_experts
            ffn = 3 * d * config.moe_intermediate_size * routed + d * config.num_experts  # + router
        else:
            ffn = 3 * d * config.intermediate_size
        active += attn + ffn
    attention_scores = 12 * L * config.num_attention_heads * config.head_dim * seq_len
    return 6.0 * active + attention_scores


def load_model_from_checkpoint(path: str | Path) -> HizooForCausalLM:
    """A HizooForCausalLM from a Lightning ``.ckpt`` (written by HizooLightningModule) or an exported HF directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not an exported hizoo model directory")
        return HizooForCausalLM.from_pretrained(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "hizoo_config" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {path} has no 'hizoo_config'/'state_dict': not written by HizooLightningModule")
    model = HizooForCausalLM(HizooConfig(**checkpoint["hizoo_config"]))
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (model.config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
