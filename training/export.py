"""HFExportCallback: the trained model as a self-contained Hugging Face directory, from any Trainer.

``python train.py fit`` adds one to the Trainer (unless the config lists its own), so a finished run exports to
``<run folder>/hf_model``. Any other Trainer can use it as well::

    trainer = L.Trainer(..., callbacks=[HFExportCallback()])                  # fit -> <default_root_dir>/hf_model
    trainer = L.Trainer(..., callbacks=[HFExportCallback(on_validate=True)])
    trainer.validate(module, datamodule, ckpt_path=...)                       # -> <default_root_dir>/hf_model-stepS

The export is refused (nothing written, the reason in ``refused`` and in a warning) when the run took no optimizer
step or ended with a non-finite validation perplexity; ``python train.py`` then exits with status 1. An
interrupted fit never reaches the export (Lightning ends ``fit`` before ``on_fit_end``). Under expert parallelism
every rank takes part (the experts are gathered to global rank 0, which writes the directory).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ..models.export import export_pretrained
from ..models.model_card import ModelCardInfo


def export_refusal(trainer: L.Trainer, steps: int | None) -> str | None:
    """Why the model after ``steps`` optimizer steps is not worth exporting, or None. The same on every rank (the
    step count and the synced validation perplexity are global)."""
    if not steps:
        return (f"the run took no optimizer step (trainer.max_steps={trainer.max_steps}, "
                f"max_epochs={trainer.max_epochs}, {trainer.num_training_batches} training batches): "
                "nothing was exported")
    ppl = trainer.callback_metrics.get("val/ppl")
    if ppl is not None and not math.isfinite(float(ppl)):
        checkpoints = Path(trainer.default_root_dir) / "checkpoints"
        return (f"validation perplexity is {float(ppl)} at step {steps}: the model diverged, nothing was exported "
                f"(checkpoints stay in {checkpoints})")
    return None


class HFExportCallback(L.Callback):
    """Exports the LightningModule's HizooForCausalLM (``models/export.py``: weights, config with ``auto_map`` and
    the modeling code, generation config with the special tokens, the data module's tokenizer, a model card with
    the training tokens and the validation perplexity).

    Args:
        dirpath: where to export; default ``<trainer.default_root_dir>/hf_model`` after ``fit`` and
            ``<trainer.default_root_dir>/hf_model-step<S>`` after ``validate`` (S: the checkpoint's optimizer step,
            so validating an earlier checkpoint never replaces the run's final export).
        on_validate: also export at the end of ``trainer.validate`` (not of the validations inside ``fit``).
    """

    def __init__(self, dirpath: str | None = None, on_validate: bool = False):
        if dirpath is not None and (not isinstance(dirpath, (str, Path)) or not str(dirpath).strip()):
            raise ValueError(f"dirpath={dirpath!r} must name a folder, or be None for the run folder's hf_model")
        if not isinstance(on_validate, bool):
            raise ValueError(f"on_validate={on_validate!r} must be true or false")
        self.dirpath, self.on_validate = dirpath, on_validate
        self.exported: Path | None = None  # the directory of the latest export (global rank 0)
        self.refused: str | None = None  # why the latest export was refused

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "hf_model")
        self.export(trainer, pl_module, trainer.global_step, out)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.on_validate or trainer.state.fn != "validate":
            return
        steps = getattr(pl_module, "checkpoint_step", None)  # the validated checkpoint's step (None: not trained)
        default = Path(trainer.default_root_dir) / f"hf_model-step{steps}"
        self.export(trainer, pl_module, steps, Path(self.dirpath or default))

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule, steps: int | None, out: Path) -> Path | None:
        """Export after ``steps`` optimizer steps into ``out``; every rank calls it (a collective under expert
        parallelism). Returns ``out`` on global rank 0 when exported, else None."""
        if not hasattr(pl_module, "model_state_for_export") or getattr(pl_module, "model", None) is None:
            raise TypeError(f"{type(self).__name__} exports a HizooLightningModule's model; got "
                            f"{type(pl_module).__name__}")
        self.exported, self.refused = None, export_refusal(trainer, steps)
        if self.refused:
            rank_zero_warn(f"hizoo: {self.refused}")
            return None
        state_dict = pl_module.model_state_for_export()  # every rank: expert parallelism gathers to rank 0
        if trainer.is_global_zero:
            export_pretrained(pl_module.model, out, tokenizer=getattr(trainer.datamodule, "tokenizer", None),
                              card=_card(trainer, steps, out, fitted=trainer.state.fn == "fit"), state_dict=state_dict)
            self.exported = out
            rank_zero_info(f"exported Hugging Face model: {out}")
        trainer.strategy.barrier("hizoo_export")  # every rank leaves with the directory written
        return self.exported


def _card(trainer: L.Trainer, steps: int, out: Path, fitted: bool) -> ModelCardInfo:
    """The model card's run numbers: training tokens, sequence length, validation perplexity, data, provenance.
    After ``validate`` the training tokens are left unknown: this Trainer's batch settings need not be the run's."""
    data = trainer.datamodule
    batch_size, seq_len = getattr(data, "batch_size", None), getattr(data, "seq_len", None)
    tokens = None
    if fitted and batch_size is not None and seq_len is not None:
        # each optimizer step: accumulate_grad_batches micro-batches per process of batch_size full sequences
        # (the training loader drops the last incomplete batch)
        tokens = steps * trainer.accumulate_grad_batches * trainer.world_size * batch_size * seq_len
    ppl = trainer.callback_metrics.get("val/ppl")
    source = getattr(data, "source", None)
    return ModelCardInfo(
        path=str(out), training_tokens=tokens, training_sequence_length=seq_len,
        validation_perplexity=float(ppl) if ppl is not None else None,
        training_data=f"`--data.source {source}`" if source is not None else None,
        source=f"trained from scratch with hizoo's `train.py` for {steps} optimizer steps")
