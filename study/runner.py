"""Train one (variant, seed) of a study through train.py's entry point and measure it on held-out data.

A run is a LightningCLI config (``run_config``: the scale's model, data and budget, the variant's HizooConfig
fields, the study's callbacks) passed to ``train.main`` as ``python train.py fit --config`` would take it; the
validation CE is the run's own logged ``val/ce`` and the parameter counts are ``HizooConfig.num_parameters``.

Each run writes ``runs/<variant>/seed<k>/result.json`` (atomically) under the study folder and logs to
TensorBoard under ``tensorboard/<variant>/seed<k>``; a study that is started again skips the runs whose result
is there, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from ..analysis.report import DiagnosticsReport, as_report, collect
from ..data import HizooDataModule
from ..models.files import atomic_write_json, read_json
from .variants import Scale, Variant


class CurveRecorder(L.Callback):
    """Validation CE at every validation and training CE at every logging step: the study's curves."""

    def __init__(self):
        self.val: list[tuple[int, float]] = []
        self.train: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, pl_module):
        ce = trainer.callback_metrics.get("val/ce")
        if ce is not None and not trainer.sanity_checking:
            self.val.append((trainer.global_step, float(ce)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ce = trainer.callback_metrics.get("train/ce")
        if ce is not None and trainer.global_step % trainer.log_every_n_steps == 0:
            self.train.append((trainer.global_step, float(ce)))


def held_out_batch(datamodule: HizooDataModule, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` validation sequences evenly spaced over the split (which is in corpus order, so the sample spans
    the domains) -> (input_ids [n, S], domain_ids [n, S])."""
    data = datamodule.val_set
    n = min(n, len(data))
    rows = torch.linspace(0, len(data) - 1, n).round().long()
    return data.input_ids[rows], data.domain_ids[rows]


def summary_metrics(report: DiagnosticsReport | dict) -> dict:
    """The study's per-run numbers of a diagnostics report or its JSON form: ``DiagnosticsReport.study_metrics``
    (layer means; absent sections give no keys)."""
    return as_report(report).study_metrics()


def run_config(variant: Variant, scale: Scale, seed: int, out: Path, steps: int | None = None,
               source: str | list[str] | None = None) -> dict:
    """The LightningCLI config of one (variant, seed) run, as ``python train.py fit --config`` takes it: the
    scale's model, data and budget with the variant's HizooConfig fields on top, the study's curves and
    diagnostics as callbacks, TensorBoard under ``out/tensorboard/<variant>/seed<seed>``, no checkpoints."""
    steps = steps or scale.steps
    data = {**scale.data, "seed": seed, "cache_dir": str(out / "cache")}  # the training order is drawn from the seed
    if source is not None:
        data.update(source=source, max_files=None)
    return {
        "seed_everything": seed,  # model init (and any other draw) from the seed
        "trainer": {
            "max_steps": steps, "val_check_interval": min(scale.val_every, steps),
            "limit_val_batches": scale.val_batches if scale.val_batches is not None else 1.0,
            "check_val_every_n_epoch": None, "log_every_n_steps": min(10, steps), "gradient_clip_val": 1.0,
            "accelerator": scale.accelerator, "devices": 1, "precision": scale.precision,
            "default_root_dir": str(result_path(out, variant.name, seed).parent),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(out / "tensorboard"), "name": variant.name,
                                     "version": f"seed{seed}"}},
            "callbacks": [
                {"class_path": "hizoo.study.runner.CurveRecorder"},
                {"class_path": "hizoo.analysis.callback.DiagnosticsCallback",
                 "init_args": {"scalars_every_n_steps": max(1, steps // 10), "figures_every_n_steps": steps}}],
            "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0},
        "model": {"model_config": {**scale.model, **variant.model}, "lr": scale.lr,
                  "warmup_steps": min(scale.warmup_steps, max(1, steps // 10))},
        "data": data,
    }


def train_variant(variant: Variant, scale: Scale, seed: int, out: Path, source: str | list[str] | None = None,
                  steps: int | None = None) -> dict:
    """Train ``variant`` at ``scale`` from ``seed`` (model init and data order) through train.py's entry point
    (``run_config`` as its ``--config``) and measure it.

    Writes ``out/runs/<variant>/seed<seed>/result.json`` and returns it as ``load_result`` reads it:
    {"variant", "label", "seed", "tokens", "params", "active_params", "val_ce", "val_ppl",
    "curve": {"val": [[step, ce]], "train": …}, "report": the full diagnostics report, "seconds",
    "metrics": summary_metrics of the report}. ``val_ce`` is the run's last logged ``val/ce`` (the validation
    after the last optimizer step, over ``scale.val_batches`` batches), the parameters ``HizooConfig``'s counts."""
    from .. import train  # train.py: the one training entry point (HizooCLI)

    steps = steps or scale.steps
    start = time.perf_counter()
    config = run_config(variant, scale, seed, out, steps, source)
    with warnings.catch_warnings():  # python -m hizoo.study's own argv is not this run's: LightningCLI need not say so
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = train.main(["fit", "--config", json.dumps(config)], export=False)
    trainer = cli.trainer
    if not trainer.state.finished or trainer.interrupted or trainer.global_step != steps:
        raise RuntimeError(f"{variant.name} seed {seed}: training did not finish (stopped at step {trainer.global_step})")
    curves = next(c for c in trainer.callbacks if isinstance(c, CurveRecorder))
    if not curves.val or curves.val[-1][0] != steps:
        raise RuntimeError(f"{variant.name} seed {seed}: no validation after the last step {steps} "
                           f"(validations at {[step for step, _ in curves.val]})")
    val_ce = curves.val[-1][1]  # the logged val/ce of the final validation

    model, datamodule = cli.model.model.eval(), cli.datamodule
    device = next(model.parameters()).device
    input_ids, domain_ids = held_out_batch(datamodule, scale.eval_sequences)
    report = collect(model, input_ids.to(device), domain_ids.to(device), datamodule.domain_names)
    result = {
        "variant": variant.name, "label": variant.label, "seed": seed, "scale": scale.name, "steps": steps,
        "tokens": steps * datamodule.batch_size * datamodule.seq_len, "params": model.config.num_parameters(),
        "active_params": model.config.num_parameters(active=True), "val_ce": val_ce, "val_ppl": math.exp(val_ce),
        "curve": {"val": curves.val, "train": curves.train}, "report": report, "seconds": time.perf_counter() - start,
    }
    path = result_path(out, variant.name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result, default=str)  # a kill mid-write leaves no truncated result.json
    return load_result(path)


class CorruptResultError(ValueError):
    """A run's result.json exists but cannot be used; the message names the file and how to recover."""


_RESULT_FIELDS = ("variant", "seed", "steps", "val_ppl", "report")


def result_path(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / variant / f"seed{seed}" / "result.json"


def load_result(path: Path) -> dict:
    """A result.json back as train_variant returned it (JSON turns the int layer keys into strings). The
    metrics are derived again from the stored report, so a metric added later applies to finished runs.

    A file that cannot be read (truncated, corrupt, or without the fields train_variant writes) raises
    ``CorruptResultError`` naming it and how to recover."""
    recover = "delete it to train that run again, or start the study with --fresh to retrain every run"
    try:
        result = read_json(path, recover=recover)
    except OSError as err:
        raise CorruptResultError(f"{path} cannot be read ({err.strerror or err}); {recover}") from err
    except ValueError as err:
        raise CorruptResultError(str(err)) from err
    missing = [key for key in _RESULT_FIELDS if not isinstance(result, dict) or key not in result]
    if missing:
        raise CorruptResultError(f"{path} is not a complete run result (no {', '.join(missing)}); {recover}")
    report = result["report"]
    try:  # a report missing a required field, or with a field no metric has, is as unusable as a truncated file
        metrics = summary_metrics(report)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise CorruptResultError(f"{path} holds a diagnostics report that cannot be read ({err}); {recover}") from err
    for section in ("experts", "domains"):
        if section in report and "layers" in report[section]:
            report[section]["layers"] = {int(k): v for k, v in report[section]["layers"].items()}
    result["metrics"] = {"val_ppl": result["val_ppl"], **metrics}
    return result


def build_datamodule(scale: Scale, out: Path, source: str | list[str] | None) -> HizooDataModule:
    """The scale's data module, set up (``source`` replaces its corpus; the tokenizer is cached in out/cache)."""
    data = dict(scale.data)
    if source is not None:
        data.update(source=source, max_files=None)
    datamodule = HizooDataModule(**data, cache_dir=str(out / "cache"))
    datamodule.setup("fit")
    return datamodule


def _train_in_worker(variant: Variant, scale: Scale, seed: int, out: Path, source, steps: int | None) -> None:
    """One run in a worker process: one thread (the workers share the cores), its own data module."""
    import logging

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    train_variant(variant, scale, seed, out, source, steps)


def run_study(variants: list[Variant], scale: Scale, seeds: list[int], out: Path, source: str | list[str] | None = None,
              steps: int | None = None, fresh: bool = False, jobs: int = 1, log=print) -> list[dict]:
    """Train every (variant, seed) not already done in ``out`` (all of them with ``fresh``); returns the results
    in (variant, seed) order. ``source`` overrides the scale's corpus (local files or ``hf:NAME``). ``jobs`` > 1
    trains that many runs at once in worker processes of one thread each (CPU scales: one job per core)."""
    out.mkdir(parents=True, exist_ok=True)
    build_datamodule(scale, out, source)  # trains the tokenizer once (out/cache), before any run or worker starts
    pairs = [(v, s) for v in variants for s in seeds]
    todo = []
    for variant, seed in pairs:
        path = result_path(out, variant.name, seed)
        if path.is_file() and not fresh:
            prior = load_result(path)
            if prior["steps"] == (steps or scale.steps):
                log(f"{variant.name} seed {seed}: done before, val ppl {prior['val_ppl']:.2f}")
                continue
        todo.append((variant, seed))

    def done(i: int, variant: Variant, seed: int) -> None:
        result = load_result(result_path(out, variant.name, seed))  # a worker's result is only on disk
        log(f"[{i}/{len(todo)}] {variant.name} seed {seed}: val ppl {result['val_ppl']:.2f} ({result['seconds']:.0f} s)")

    if jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_train_in_worker, v, scale, s, out, source, steps): (v, s) for v, s in todo}
            for i, future in enumerate(as_completed(futures), 1):
                future.result()  # a failed run raises here, with the worker's traceback
                done(i, *futures[future])
    else:
        for i, (variant, seed) in enumerate(todo, 1):
            train_variant(variant, scale, seed, out, source, steps)
            done(i, variant, seed)
    return [load_result(result_path(out, v.name, s)) for v, s in pairs]
