"""Lightning callback: expert-balance and stream-dominance diagnostics in TensorBoard during training.

On every ``scalars_every_n_steps``-th optimizer step it runs one extra forward of the model with
``output_diagnostics=True`` (no grad, eval mode so router state such as Hi-MoE's EMA or the loss-free bias
accumulators is not updated, then the previous mode is restored) on the first ``max_sequences`` sequences of
the step's batch, and logs scalars under ``experts/…`` and ``streams/…``. Every ``figures_every_n_steps``-th
step it also logs figures (layer × expert load heatmap, group loads, stream norm shares, mixing heatmaps,
histogram of the mixing-logit spreads, per-token sums of the mixings and of their product over depth, Amax gain
over depth, domain × expert usage), load histograms and the stream-ablation losses. Nothing is collected on other
steps, so the cost is one small forward per N steps. Measured on 2 CPU threads (Hi-MoE E=16 G=4 K=4 + mHC n=4,
6 layers, d=256, batch 8×256): a training step 1.03 s, a scalars collection 0.16 s, a figures collection (with
ablation and rendering) 0.75 s, i.e. 0.5% of training time at the defaults N=50, M=500 and 2.3% at N=10, M=100.
The per-token mixing metrics add about 4 ms of CPU time per collection on the quickstart model (4×128 tokens,
8 connections, one thread: ``stream_metrics`` 1.3 -> 5.0 ms, a whole collection ≈ 31 -> 35 ms, of which the
diagnostics forward is ≈ 23 ms).

``experts/layerI/max_vio_accumulated`` is MaxVio of the expert counts summed over all collected batches since
the start of the run (the balance over time, which a single batch's MaxVio overstates).

``batch`` is a dict with ``input_ids`` [B, S] and optionally ``domain_ids`` [B, S]; domain names come from
``trainer.datamodule.domain_names`` when it has them. The LightningModule must hold the HizooForCausalLM as
``pl_module.model``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import matplotlib.pyplot as plt
import torch

from ..routing.stats import LoadAccumulator
from .plots import figures
from .report import collect, scalars


class DiagnosticsCallback(pl.Callback):
    def __init__(self, scalars_every_n_steps: int = 50, figures_every_n_steps: int = 500, max_sequences: int = 4):
        super().__init__()
        for name, value in (("scalars_every_n_steps", scalars_every_n_steps),
                            ("figures_every_n_steps", figures_every_n_steps), ("max_sequences", max_sequences)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DiagnosticsCallback: {name} must be a positive int, got {value!r}")
        self.scalars_every_n_steps = scalars_every_n_steps
        self.figures_every_n_steps = figures_every_n_steps
        self.max_sequences = max_sequences
        self.accumulators: dict[int, LoadAccumulator] = {}  # per MoE layer, over the collected batches

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        step = trainer.global_step  # optimizer steps done, counted after this batch's step
        do_scalars = step % self.scalars_every_n_steps == 0
        do_figures = step % self.figures_every_n_steps == 0
        if not (do_scalars or do_figures):
            return
        # with gradient accumulation several batches end at the same global_step: collect once
        if getattr(self, "_last_step", None) == step:
            return
        self._last_step = step
        model = getattr(pl_module, "model", None)
        if model is None:
            raise AttributeError("DiagnosticsCallback needs the LightningModule to hold its HizooForCausalLM as .model")
        input_ids = batch["input_ids"][: self.max_sequences]  # [b, S]
        domain_ids = batch.get("domain_ids") if isinstance(batch, dict) else None
        if domain_ids is not None:
            domain_ids = domain_ids[: self.max_sequences]
        names = getattr(trainer.datamodule, "domain_names", None) if trainer.datamodule is not None else None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                report = collect(model, input_ids, domain_ids, names, ablation=do_figures)
        finally:
            model.train(was_training)
        if not trainer.is_global_zero:  # every rank runs the forward (sharded strategies need it), rank 0 logs
            return
        values = scalars(report)
        for i, s in report.get("experts", {}).get("layers", {}).items():
            acc = self.accumulators.setdefault(i, LoadAccumulator(len(s["load"])))
            acc.counts += torch.tensor(s["load"], dtype=torch.float64) * report["tokens"]  # ∝ this batch's counts
            values[f"experts/layer{i}/max_vio_accumulated"] = acc.max_violation()
        writer = _tensorboard(trainer)
        if writer is None:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)
            return
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
        if do_figures:
            for tag, fig in figures(report).items():
                writer.add_figure(tag, fig, step)  # closes the figure
                plt.close(fig)
            for i, s in report.get("experts", {}).get("layers", {}).items():
                writer.add_histogram(f"experts/layer{i}/load", torch.tensor(s["load"]), step)
        writer.flush()


def _tensorboard(trainer: pl.Trainer):
    """The SummaryWriter of the trainer's TensorBoardLogger, or None."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
