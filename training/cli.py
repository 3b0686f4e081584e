"""HizooCLI: LightningCLI with a run folder that resumes, checkpoints that survive, preemption that is not
mistaken for success, and runs that fail loudly instead of exporting an untrained model.

``python train.py fit --config X`` trains in ``trainer.default_root_dir`` (the run folder, see
``training.run_folder``); ``python train.py fit --config X --ckpt_path last`` continues that run. Exit status:
0 for a finished and exported run, 128 + signal number after SIGTERM (143) or SIGUSR1 (138) with the
checkpoint saved, 1 for a run that trained nothing or ended with a non-finite validation perplexity. The export
is ``training.export.HFExportCallback``, which fit adds unless the config lists one.

``validate``, ``test`` and ``predict`` evaluate a checkpoint of the run folder: ``--ckpt_path FILE`` or
``--ckpt_path last`` (the run's newest ``last.ckpt``, found as ``fit`` finds it); the model is the checkpoint's
(LightningCLI reads its hyperparameters). ``test`` logs ``test/loss`` and ``test/ppl`` to the run folder's
TensorBoard at the checkpoint's step; ``predict`` generates from ``--data.predict_prompts`` with the
``--generation.*`` settings (models/generation.py) and writes ``predictions.jsonl`` in the run folder
(``--predictions_file`` elsewhere). Their configs are saved as ``config_<subcommand>.yaml``, so ``config.yaml``
stays the training run's.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ..models.generation import GenerationSettings, write_predictions
from .checkpointing import AtomicCheckpointIO, RunCheckpoint
from .export import HFExportCallback, export_refusal
from .run_folder import RunFolderInUse, checkpoint_files, checkpoint_step, last_checkpoint


class RunFailed(SystemExit):
    """The run ended without a model worth exporting (exit status 1, the message on stderr, nothing exported)."""

    def __init__(self, message: str):
        super().__init__(f"hizoo: {message}")
        self.message = message


EVALUATION_SUBCOMMANDS = ("validate", "test", "predict")


class HizooCLI(LightningCLI):
    """LightningCLI for hizoo: ``fit`` in a run folder (resume, preemption, export), and ``validate``/``test``/
    ``predict`` on one of its checkpoints."""

    run_dir: Path
    resume_from: Path | None = None
    predictions: list[dict] | None = None  # what the latest predict generated (global rank 0)

    def __init__(self, *args, export: bool = True, **kwargs):
        """``export=False``: ``fit`` neither exports the model nor refuses a run that diverged (exit status 1); a
        study measures its runs, divergence included, instead of publishing them."""
        self.export = export
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # config.yaml of the latest start
        super().__init__(*args, **kwargs)

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":  # generation settings only where they apply (fit would ignore them)
            parser.add_class_arguments(GenerationSettings, "generation")
            parser.add_argument("--predictions_file", type=str | None, default=None,
                                help="where predict writes its jsonl (default: <run folder>/predictions.jsonl)")
        return parser

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand in EVALUATION_SUBCOMMANDS:
            # before LightningCLI reads the checkpoint's hyperparameters (its model settings) from ckpt_path
            config = self.config[subcommand]
            config["ckpt_path"] = str(self._checkpoint_to_evaluate(subcommand, config))

    def _checkpoint_to_evaluate(self, subcommand: str, config) -> Path:
        """``--ckpt_path``: a checkpoint file, or ``last``, the run folder's newest ``last.ckpt`` (as fit resumes)."""
        requested = config.get("ckpt_path")
        if requested is None:
            raise ValueError(f"{subcommand} evaluates a trained checkpoint: give --ckpt_path FILE, or --ckpt_path last "
                             "for the run folder's newest last.ckpt")
        run_dir = Path(config.get("trainer", {}).get("default_root_dir") or os.getcwd())
        if requested == "last":
            found = last_checkpoint(run_dir, _configured_checkpoint_dirs(config.get("trainer", {}), run_dir))
            if found is None:
                raise FileNotFoundError(f"--ckpt_path last: no checkpoint in {run_dir} (trainer.default_root_dir); "
                                        "give the run folder of a trained run, or --ckpt_path FILE")
            rank_zero_info(f"{subcommand}: {found} (step {checkpoint_step(found)})")
            return found
        if not Path(requested).is_file():
            raise FileNotFoundError(f"--ckpt_path {requested}: no such checkpoint file")
        return Path(requested)

    # -- before the trainer exists: the run folder, what to resume, logger, checkpointing ------------------
    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        self.run_dir = Path(config.get("default_root_dir") or os.getcwd())
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        defaults = self.trainer_defaults.get("callbacks") or []
        defaults = list(defaults) if isinstance(defaults, (list, tuple)) else [defaults]
        if config.get("logger") is False and any(isinstance(c, LearningRateMonitor) for c in callbacks):
            rank_zero_info("trainer.logger=false: the configured LearningRateMonitor is left out (it logs to a logger)")
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]  # every load weights_only, errors naming the file
        if self.subcommand != "fit":
            kwargs["callbacks"] = callbacks
            if self.subcommand in ("validate", "test") and config.get("logger") in (None, True):
                kwargs["logger"] = TensorBoardLogger(save_dir=str(self.run_dir), name="", version="",
                                                     default_hp_metric=False)
            elif self.subcommand == "predict" and config.get("logger") in (None, True):
                kwargs["logger"] = False  # nothing to log; no empty events file in the run folder
            # the training run's config.yaml stays; this start's config is config_<subcommand>.yaml
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config_{self.subcommand}.yaml"}
            return super().instantiate_trainer(**kwargs)

        checkpoint_dir = self.run_dir / "checkpoints"
        checkpointers = [c for c in [*callbacks, *defaults] if isinstance(c, ModelCheckpoint)]
        if config.get("enable_checkpointing", True) is not False and not checkpointers:
            checkpointers = [RunCheckpoint()]
            callbacks += checkpointers
        for checkpointer in checkpointers:
            if checkpointer.dirpath is None:  # where `--ckpt_path last` looks, before Lightning's setup runs
                checkpointer.dirpath = str(checkpoint_dir)
        if self.export and not any(isinstance(c, HFExportCallback) for c in [*callbacks, *defaults]):
            callbacks.append(HFExportCallback())  # a finished run exports to <run folder>/hf_model
        kwargs["callbacks"] = callbacks
        checkpoint_dirs = sorted({Path(c.dirpath) for c in checkpointers}) or [checkpoint_dir]

        self.resume_from = self._resume_checkpoint(self._get(self.config_init, "ckpt_path"), checkpoint_dirs)
        start_step = checkpoint_step(self.resume_from) if self.resume_from is not None else 0

        if config.get("logger") in (None, True):
            # TensorBoard logs in the run folder itself (no version_N subfolder); a resumed start hides what the
            # interrupted one logged after its checkpoint, so every step appears once.
            kwargs["logger"] = TensorBoardLogger(save_dir=str(self.run_dir), name="", version="",
                                                 default_hp_metric=False, purge_step=start_step)
        return super().instantiate_trainer(**kwargs)
    def _resume_checkpoint(self, requested, checkpoint_dirs: list[Path]) -> Path | None:
        existing = checkpoint_files(self.run_dir, checkpoint_dirs)
        if requested == "last":
            found = last_checkpoint(self.run_dir, checkpoint_dirs)
            if found is None:
                rank_zero_info(f"--ckpt_path last: no checkpoint in {self.run_dir} yet; starting the run at step 0")
                return None
            rank_zero_info(f"resuming {found} (step {checkpoint_step(found)})")
            return found
        if requested is not None:
            return Path(requested)
        slurm_requeued = SLURMEnvironment.detect() and any(p.name.startswith("hpc_ckpt_") for p in existing)
        if existing and not slurm_requeued:  # Lightning resumes a requeued SLURM job from hpc_ckpt_N itself
            newest = max(existing, key=lambda p: p.stat().st_mtime_ns)
            raise RunFolderInUse(
                f"{self.run_dir} already holds a run ({len(existing)} checkpoint(s); newest {newest}). Continue it "
                "with the same command and --ckpt_path last; train a new run elsewhere with "
                f"--trainer.default_root_dir; or delete {self.run_dir} to start this one over")
        return None

    # -- fit: resume, stop cleanly on preemption, refuse to export what did not train ----------------------
    def fit(self, model, datamodule=None, ckpt_path=None, **kwargs) -> None:
        trainer = self.trainer
        if trainer.max_steps == 0:
            raise RunFailed("trainer.max_steps=0 trains nothing: set a positive number of steps "
                            "(or -1 to train for trainer.max_epochs)")
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=self.resume_from, **kwargs)  # exports at its end
        except SIGTERMException:
            self._stopped_by_signal()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()  # a live gloo/NCCL group aborts the interpreter at exit
        if trainer.interrupted or not trainer.is_global_zero or not self.export:
            return
        refused = export_refusal(trainer, trainer.global_step)
        if refused:
            raise RunFailed(refused)
        print(f"\nrun folder: {self.run_dir}   (tensorboard --logdir {self.run_dir})")  # the export is logged above
        ppl = trainer.callback_metrics.get("val/ppl")
        if ppl is not None:
            print(f"validation perplexity: {float(ppl):.2f}")

    def _stopped_by_signal(self) -> None:
        checkpointer = next((c for c in self.trainer.callbacks if isinstance(c, RunCheckpoint)), None)
        signum = (checkpointer.stop_signal if checkpointer else None) or signal.SIGTERM
        name = signal.Signals(signum).name
        where = checkpointer.stop_checkpoint if checkpointer else None
        if self.trainer.is_global_zero:
            saved = f"checkpoint saved: {where}" if where else "no checkpoint callback: nothing saved"
            print(f"\nhizoo: stopped by {name} at step {self.trainer.global_step}; {saved}. Continue with the "
                  "same command and --ckpt_path last", file=sys.stderr, flush=True)
        raise SystemExit(128 + int(signum))

    # -- predict: generation from the prompts file, written to the run folder ------------------------------
    def predict(self, model, datamodule=None, ckpt_path=None, **kwargs) -> list[dict]:
        trainer = self.trainer
        if trainer.world_size > 1:
            raise ValueError(f"predict runs in one process (trainer.devices=1, trainer.num_nodes=1); this trainer has "
                             f"{trainer.world_size}")
        model.generation = self._get(self.config_init, "generation")
        kwargs["return_predictions"] = True
        predictions = trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)
        out = Path(self._get(self.config_init, "predictions_file") or self.run_dir / "predictions.jsonl")
        write_predictions(out, predictions)
        for p in predictions:
            print(f"\n--- prompt {p['index']} ({p['finish_reason']}, {len(p['completion_ids'])} tokens)\n"
                  f"{p['prompt']}{p['completion']}")
        print(f"\n{len(predictions)} completion(s) written to {out}")
        self.predictions = predictions
        return predictions


def _configured_checkpoint_dirs(trainer_config, run_dir: Path) -> list[Path]:
    """The checkpoint folders the parsed (not yet instantiated) trainer config names: every ModelCheckpoint's
    ``init_args.dirpath``, else ``<run folder>/checkpoints``, as fit resolves them."""
    callbacks = trainer_config.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]
    dirs = []
    for callback in callbacks:
        init_args = callback.get("init_args") if hasattr(callback, "get") else None
        dirpath = init_args.get("dirpath") if init_args is not None and hasattr(init_args, "get") else None
        if dirpath:
            dirs.append(Path(dirpath))
    return sorted(set(dirs)) or [run_dir / "checkpoints"]
