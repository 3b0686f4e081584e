"""HizooLightningModule: HizooForCausalLM trained with CE + the routers' aux losses, AdamW, warm-up + cosine;
router state updated once per optimizer step; throughput and MFU over the step's own compute time; test loss and
perplexity on a held-out split; predict = generation from prompts."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch

from .config_fields import HizooConfigFields, model_config_dict
from .configuration import HizooConfig
from .expert_parallel import ExpertParallel, expert_parallel_for_lightning
from .files import load_torch_file, peek_torch_file
from .generation import GenerationSettings, generate_completion
from .modeling import HizooForCausalLM
from .moe import update_router_states
from .weight_decay import WEIGHT_DECAY_RULES, parameter_groups


class HizooLightningModule(L.LightningModule):
    """HizooForCausalLM trained with cross-entropy plus the routers' aux losses, AdamW and warm-up + cosine.

    ``weight_decay_rule`` says which parameters AdamW decays (models/weight_decay.py): "reference" (default) every
    parameter whose counterpart in the official codes is ≥ 2-D, their nanoGPT rule (weight matrices, embeddings,
    HC/mHC static logits and projections, LSS scales, Hi-MoE expert scales); "matrices" only ≥ 2-D parameters
    outside the residual-stream connections and the stream expansion. The hyperparameters store the complete
    HizooConfig field dict, so a checkpoint rebuilds the same model even if a default changes later; the vocabulary
    size taken from the data module's tokenizer is written into them too, so
    ``HizooLightningModule.load_from_checkpoint(path)`` rebuilds the trained model from the checkpoint alone.

    Beyond ``fit``: ``test`` logs ``test/loss`` (the mean token cross-entropy over the test split, as ``val/ce``)
    and ``test/ppl`` = exp(test/loss); ``predict`` generates a completion for each prompt of the data module's
    prompts file with the settings in ``self.generation`` (models/generation.py; ``--generation.*`` on the
    command line) and returns one dict per prompt.

    Args:
        model_config: HizooConfig's fields: a HizooConfigFields (LightningCLI builds it from
            ``model: {model_config: {FIELD: value}}``) or a dict of some fields, the others taking HizooConfig's
            defaults. vocab_size is replaced by the tokenizer's size when a data module is attached.
        lr: peak learning rate (> 0).
        weight_decay: AdamW weight decay of the decayed matrices (>= 0).
        betas: AdamW (beta1, beta2), each in [0, 1).
        warmup_steps: optimizer steps of linear warm-up (>= 0).
        min_lr_ratio: the cosine ends at min_lr_ratio x lr (in [0, 1]).
        peak_tflops: the accelerator's peak TFLOP/s per device; when set, model FLOPs utilization is logged.
        weight_decay_rule: "reference" | "matrices" (see above).
        expert_parallel_size: N > 1 shards every MoE layer's routed experts over N of the data-parallel processes
            (models/expert_parallel.py; Lightning's DDP strategies). A property of the run, not of the model:
            checkpoints and exports hold every expert and load at any N.
    """

    def __init__(
        self,
        model_config: HizooConfigFields = HizooConfigFields(),
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.1,
        peak_tflops: float | None = None,
        weight_decay_rule: str = "reference",
        expert_parallel_size: int = 1,
    ):
        super().__init__()
        model_config = model_config_dict(model_config)  # validated; a plain dict in the hyperparameters
        _check_number("lr", lr, low=0.0, low_open=True)
        _check_number("weight_decay", weight_decay, low=0.0)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas={betas!r} must be a pair (beta1, beta2), each in [0, 1)")
        for i, beta in enumerate(betas):
            _check_number(f"betas[{i}]", beta, low=0.0, high=1.0, high_open=True)
        betas = tuple(float(b) for b in betas)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps!r} must be an integer >= 0 (optimizer steps)")
        _check_number("min_lr_ratio", min_lr_ratio, low=0.0, high=1.0)
        if peak_tflops is not None:
            _check_number("peak_tflops", peak_tflops, low=0.0, low_open=True)
        if weight_decay_rule not in WEIGHT_DECAY_RULES:
            raise ValueError(f"weight_decay_rule={weight_decay_rule!r} is not allowed; choose one of "
                             f"{', '.join(map(repr, WEIGHT_DECAY_RULES))}")
        if isinstance(expert_parallel_size, bool) or not isinstance(expert_parallel_size, int) \
                or expert_parallel_size < 1:
            raise ValueError(f"expert_parallel_size={expert_parallel_size!r} must be an integer >= 1")
        self.save_hyperparameters()
        self.model_config = model_config
        self.model: HizooForCausalLM | None = None
        self.expert_parallel: ExpertParallel | None = None
        self._window = StepTimer()
        self.generation = GenerationSettings()  # what predict_step generates with (not a hyperparameter)
        self.checkpoint_step: int | None = None  # optimizer step of the checkpoint loaded last, if any

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: bool | None = True, **kwargs):
        """Lightning's ``load_from_checkpoint`` with hizoo's safe loads: the file is read with
        ``torch.load(weights_only=True)`` only (``weights_only=False`` is refused), and a missing, truncated or
        foreign file raises an error that names it. The module holds the checkpoint's model (every expert, whatever
        the run's expert parallelism) with its weights; ``kwargs`` override saved hyperparameters as in Lightning."""
        if weights_only is False:  # None (Lightning's "default") and True load safely
            raise ValueError(f"weights_only={weights_only!r} is refused: hizoo checkpoints hold only tensors and "
                             "plain data, and an unsafe load could run code from the file")
        path = Path(checkpoint_path)
        checkpoint = peek_torch_file(path, "checkpoint")  # a cheap look, so that a bad file gets a named error
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hizoo_config" not in checkpoint:
            raise ValueError(f"checkpoint {path} has no 'hizoo_config'/'state_dict': not written by "
                             f"{cls.__name__}")
        del checkpoint
        load = super(HizooLightningModule, cls).load_from_checkpoint
        return load(path, map_location=map_location, hparams_file=hparams_file, strict=strict, weights_only=True,
                    **kwargs)

    def configure_model(self) -> None:
        if self.model is not None:
            self._shard_experts()
            return
        fields = dict(self.model_config)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
            fields["vocab_size"] = len(datamodule.tokenizer)
            self._record_vocab_size(fields["vocab_size"])
        self.model = HizooForCausalLM(HizooConfig(**fields))
        self._shard_experts()

    def _record_vocab_size(self, vocab_size: int) -> None:
        """The model's vocabulary size in the hyperparameters (saved with every checkpoint and in hparams.yaml), so
        that ``load_from_checkpoint`` builds the same model without the data module."""
        initial = getattr(self, "_hparams_initial", None) or {}  # what the logger writes to hparams.yaml
        for fields in (self.model_config, self.hparams.get("model_config"), initial.get("model_config")):
            if isinstance(fields, dict):
                fields["vocab_size"] = vocab_size

    def _shard_experts(self) -> None:
        """Expert parallelism applies under a Trainer (its DDP strategy, before DDP wraps the module); a module
        built without one (e.g. by ``load_from_checkpoint``, for analysis) holds every expert until it is fitted."""
        if self.hparams.expert_parallel_size > 1 and self.expert_parallel is None and self._trainer is not None:
            self.expert_parallel = expert_parallel_for_lightning(self, self.hparams.expert_parallel_size)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ids = batch["input_ids"]
        out = self.model(ids, labels=ids)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(
                f"non-finite training loss {out.loss.item()} at step {self.global_step}; the last checkpoint is kept")
        ce = out.ce_loss
        self.log("train/loss", out.loss, prog_bar=True)
        self.log("train/ce", ce)
        for name, value in (out.aux_losses or {}).items():
            self.log(f"train/aux_{name}", value)
        self._window.add_tokens(ids.numel(), ids.numel() * self.model.config.flops_per_token(ids.shape[1]))
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

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.expert_parallel is not None:
            self.expert_parallel.reduce_gradients()  # after accumulation, before clipping

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.expert_parallel is not None and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            self.expert_parallel.clip_grad_norm_(self.model.parameters(), gradient_clip_val)  # norm over all experts
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        ids = batch["input_ids"]
        out = self.model(ids, labels=ids)
        ce = out.ce_loss
        self.log("val/ce", ce, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        ce = self.trainer.callback_metrics.get("val/ce")
        if ce is not None:
            self.log("val/ppl", torch.exp(ce), prog_bar=True, sync_dist=True)
        if self.trainer.state.fn == "validate" and self.checkpoint_step is not None:
            self.log("step", float(self.checkpoint_step))  # a checkpoint's validation at its step in TensorBoard

    def test_step(self, batch: dict, batch_idx: int) -> None:
        ids = batch["input_ids"]
        out = self.model(ids, labels=ids)
        # the mean over batches weighted by their sequences = the mean over tokens (every sequence has seq_len)
        self.log("test/loss", out.ce_loss, sync_dist=True, batch_size=ids.shape[0])

    def on_test_epoch_end(self) -> None:
        loss = self.trainer.callback_metrics.get("test/loss")
        if loss is not None:
            self.log("test/ppl", torch.exp(loss), sync_dist=True)
        if self.checkpoint_step is not None:  # TensorBoard shows the test numbers at the tested step
            self.log("step", float(self.checkpoint_step))

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One prompt (the data module's predict batch) -> ``{"index", "prompt", "completion", "prompt_ids",
        "completion_ids", "finish_reason"}``."""
        datamodule = getattr(self.trainer, "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("predict needs the data module (HizooDataModule with predict_prompts): its tokenizer "
                             "encodes the prompts and decodes the completions")
        index, ids = int(batch["index"]), batch["input_ids"]
        completion = generate_completion(self.model, tokenizer, ids, self.generation, index=index)
        return {"index": index, "prompt": batch["prompt"], "completion": completion["completion"],
                "prompt_ids": ids[0].tolist(), "completion_ids": completion["completion_ids"],
                "finish_reason": completion["finish_reason"]}

    def configure_optimizers(self):
        groups = parameter_groups(self.model, self.hparams.weight_decay, self.hparams.weight_decay_rule)
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, betas=self.hparams.betas)
        total = max(self.trainer.estimated_stepping_batches, 1)
        warmup, floor = self.hparams.warmup_steps, self.hparams.min_lr_ratio

        def lr_factor(step: int) -> float:  # linear warm-up, then cosine down to min_lr_ratio
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        if self.expert_parallel is not None:  # full expert states in a checkpoint -> this rank's block
            optimizer.register_load_state_dict_pre_hook(self.expert_parallel.slice_optimizer_state)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hizoo_config"] = self.model.config.to_dict()
        if self.expert_parallel is not None:  # every expert in the file, whatever the EP size (collective)
            self.expert_parallel.gather_checkpoint(checkpoint, self.trainer.optimizers)

    def model_state_for_export(self) -> dict[str, torch.Tensor] | None:
        """The state ``save_pretrained`` must write, on global rank 0: None when ``self.model.state_dict()`` is
        complete; under expert parallelism the state with every expert, gathered to rank 0 (a collective: call
        on every rank, before the process group is destroyed)."""
        return None if self.expert_parallel is None else self.expert_parallel.full_state_dict(self.model)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run continues the checkpoint's run: its model and optimizer settings must be this run's.
        Lightning would otherwise mix them silently (weights, the optimizer's lr/betas/weight decay and the
        router state come from the checkpoint; loss coefficients and the schedule from the command line).
        Evaluating a checkpoint (validate, test, predict, ``load_from_checkpoint``) needs only the same model."""
        self.checkpoint_step = checkpoint.get("global_step")
        saved_config = checkpoint.get("hizoo_config") or {}
        if self._trainer is None and self.model is not None and "vocab_size" in saved_config \
                and self.model.config.vocab_size != saved_config["vocab_size"]:
            # load_from_checkpoint of a checkpoint written before the vocabulary size was saved in the
            # hyperparameters: the checkpoint's model config has the tokenizer's size
            self._record_vocab_size(saved_config["vocab_size"])
            self.model = HizooForCausalLM(HizooConfig(**{**self.model_config, "vocab_size": saved_config["vocab_size"]}))
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        current = self.model.config.to_dict() if self.model else None
        if fitting:
            changed = _settings_changed(checkpoint, dict(self.hparams), current)
        else:  # the module's own arguments (lr, ...) do not change what a trained model computes
            changed = _settings_changed({"hizoo_config": checkpoint.get("hizoo_config")}, {}, current)
        if not changed:
            return
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        listed = "; ".join(f"{name}: {old!r} in the checkpoint, {new!r} now" for name, old, new in changed)
        if fitting:
            raise ValueError(
                f"resuming from {path or 'the checkpoint'} with settings that differ from the checkpoint's run: "
                + listed + ". A resumed run continues the same run: drop these overrides, or start a new run in "
                "another folder (--trainer.default_root_dir)")
        raise ValueError(f"the checkpoint {path or ''} holds another model than this module builds: {listed}. "
                         "Evaluate a checkpoint with its own model settings")


def _check_number(name: str, value, low: float, high: float | None = None, low_open: bool = False,
                  high_open: bool = False) -> None:
    """``value`` is a finite real number in the interval [low, high] (ends open where asked), else ValueError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g}'}"
        interval += "" if high is None else (")" if high_open else "]")
        raise ValueError(f"{name}={value!r} must be a finite number in {interval}")


# Settings that only change how the same computation runs or is reported: a resumed run may change them.
RESUME_MAY_CHANGE = {"peak_tflops", "expert_parallel_size", "model_config.experts_backend", "model_config.hc_recompute"}
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


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_model_from_checkpoint(path: str | Path) -> HizooForCausalLM:
    """A HizooForCausalLM from a Lightning ``.ckpt`` (written by HizooLightningModule) or an exported HF directory.

    The ``.ckpt`` is read with ``torch.load(weights_only=True)`` (``models/files.py``): a file holding pickled
    objects beyond tensors and plain containers is refused without running them. Missing, truncated or foreign
    files, and weights that do not match their config (missing, unexpected or of another shape), raise an error
    that names the file; nothing is ever left at random initialization."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not an exported hizoo model directory")
        if not any((path / name).is_file() for name in _WEIGHT_FILES):
            raise FileNotFoundError(
                f"{path} has a config.json but no weights ({' or '.join(_WEIGHT_FILES[:2])}): an incomplete export")
        return HizooForCausalLM.from_pretrained(path)  # strict: mismatched weights raise (HizooPreTrainedModel)
    checkpoint = load_torch_file(path, "checkpoint")
    if not isinstance(checkpoint, dict) or "hizoo_config" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {path} has no 'hizoo_config'/'state_dict': not written by HizooLightningModule")
    try:
        config = HizooConfig(**checkpoint["hizoo_config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} holds an invalid hizoo_config: {err}") from err
    model = HizooForCausalLM(config)
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    expected = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items()
                  if k in expected and torch.is_tensor(v) and v.shape != expected[k].shape]
    model.check_loaded_keys([], [], mismatched, f"checkpoint {path}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.check_loaded_keys(missing, unexpected, [], f"checkpoint {path}")
    return model
