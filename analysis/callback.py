"""Lightning callback: expert-balance and stream-dominance diagnostics in TensorBoard during training.

Training-batch expert metrics (``train/experts/…``): the routers count every routed (token, expert) pair of every
training forward (detached), ``update_router_states`` sums the counts over the micro-batches of the optimizer step
and over the data-parallel ranks (one all-reduce with the router-state sums), and on every
``scalars_every_n_steps``-th optimizer step this callback logs the step's per-layer CV, MaxVio, normalized load
entropy, drop rate and, with groups, group CV, max group share and within-group collapse
(``models.moe.step_expert_metrics``: the same ``routing.stats`` functions as the held-out metrics), plus
``train/experts/layerI/max_vio_accumulated``: MaxVio of the counts summed over every optimizer step seen since
the run (or its resume) started, the balance over time, which one step's MaxVio overstates. No extra forward.
These need a LightningModule that calls ``update_router_states`` once per optimizer step (hizoo's does).

Sample diagnostics (``experts/…``, ``streams/…``): one extra forward of the model with
``output_diagnostics=True`` (no grad, eval mode so router state such as Hi-MoE's EMA or the loss-free bias
accumulators is not updated, then the previous mode is restored) on the first ``max_sequences`` sequences of the
step's batch. It runs on the ``scalars_every_n_steps``-th steps when the model has several residual streams (the
stream metrics need the activations; only ``streams/…`` are logged then), and on every
``figures_every_n_steps``-th step, where everything it measures is logged: ``experts/…`` and ``streams/…``
scalars, figures (layer × expert load heatmap, group loads, stream norm shares, mixing heatmaps, histogram of
the mixing-logit spreads, per-token sums of the mixings and of their product over depth, Amax gain over depth,
domain × expert usage), load histograms and the stream-ablation losses. Measured on 2 CPU threads (Hi-MoE E=16
G=4 K=4 + mHC n=4, 6 layers, d=256, batch 8×256): a training step 1.03 s, a scalars collection 0.16 s, a figures
collection (with ablation and rendering) 0.75 s, i.e. 0.5% of training time at the defaults N=50, M=500 and
2.3% at N=10, M=100.

``batch`` is a dict with ``input_ids`` [B, S] and optionally ``domain_ids`` [B, S]; domain names come from
``trainer.datamodule.domain_names`` when it has them. The LightningModule must hold the HizooForCausalLM as
``pl_module.model``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import matplotlib.pyplot as plt
import torch

from ..models.moe import step_expert_metrics
from ..routing.stats import LoadAccumulator, max_violation
from .experts import ExpertMetrics
from .plots import figures
from .report import DiagnosticsReport, diagnose, model_kind

TRAIN_PREFIX = "train/experts"  # training-batch expert metrics; the sample forward's are under "experts"


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
        self.accumulators: dict[int, LoadAccumulator] = {}  # per MoE layer, over every optimizer step's counts
        self._last_step = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # 0, or the resumed step: no optimizer step has finished yet

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        step = trainer.global_step  # optimizer steps done, counted after this batch's step
        # act once per optimizer step, after its last micro-batch (the others end at an unchanged global_step)
        if step == self._last_step:
            return
        self._last_step = step
        model = getattr(pl_module, "model", None)
        if model is None:
            raise AttributeError("DiagnosticsCallback needs the LightningModule to hold its HizooForCausalLM as .model")
        train = ExpertMetrics(step_expert_metrics(model))  # the step just finished, summed over ranks
        for i, layer in train.layers.items():  # every step (on the device, no sync): the balance over time
            router = model.model.layers[i].ffn.router
            acc = self.accumulators.setdefault(i, LoadAccumulator(len(layer.load), router.step_counts.device))
            acc.add_counts(router.step_counts[: len(layer.load)])
        do_scalars = step % self.scalars_every_n_steps == 0
        do_figures = step % self.figures_every_n_steps == 0
        sample = do_figures or (do_scalars and model_kind(model.config)["streams"])
        if not (do_scalars or do_figures):
            return
        values = {}
        if do_scalars:
            values.update(train.scalars(TRAIN_PREFIX))
            for i, acc in self.accumulators.items():
                values[f"{TRAIN_PREFIX}/layer{i}/max_vio_accumulated"] = max_violation(acc.load())
        report = self._collect(trainer, model, batch, do_figures) if sample else None
        if not trainer.is_global_zero:  # every rank runs the forward (sharded strategies need it), rank 0 logs
            return
        if report is not None:
            values.update({tag: v for tag, v in report.scalars().items() if do_figures or tag.startswith("streams/")})
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
            for i, layer in (report.experts.layers.items() if report.experts is not None else ()):
                writer.add_histogram(f"experts/layer{i}/load", torch.tensor(layer.load), step)
        writer.flush()

    def _collect(self, trainer: pl.Trainer, model, batch, ablation: bool) -> DiagnosticsReport:
        """The diagnostics report of the extra forward on the first ``max_sequences`` sequences of ``batch``."""
        input_ids = batch["input_ids"][: self.max_sequences]  # [b, S]
        domain_ids = batch.get("domain_ids") if isinstance(batch, dict) else None
        if domain_ids is not None:
            domain_ids = domain_ids[: self.max_sequences]
        names = getattr(trainer.datamodule, "domain_names", None) if trainer.datamodule is not None else None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return diagnose(model, input_ids, domain_ids, names, ablation=ablation)
        finally:
            model.train(was_training)


def _tensorboard(trainer: pl.Trainer):
    """The SummaryWriter of the trainer's TensorBoardLogger, or None."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
