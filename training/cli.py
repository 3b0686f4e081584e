"""HizooCLI: LightningCLI with a run folder that resumes, checkpoints that survive, preemption that is not
mistaken for success, and runs that fail loudly instead of exporting an untrained model.

``python train.py fit --config X`` trains in ``trainer.default_root_dir`` (the run folder, see
``training.run_folder``); ``python train.py fit --config X --ckpt_path last`` continues that run. Exit status:
0 for a finished and exported run, 128 + signal number after SIGTERM (143) or SIGUSR1 (138) with the
checkpoint saved, 1 for a run that trained nothing or ended with a non-finite validation perplexity.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ..models.export import export_pretrained
from ..models.model_card import ModelCardInfo
from .checkpointing import AtomicCheckpointIO, RunCheckpoint
from .run_folder import RunFolderInUse, checkpoint_files, checkpoint_step, last_checkpoint


class RunFailed(SystemExit):
    """The run ended without a model worth exporting (exit status 1, the message on stderr, nothing exported)."""

    def __init__(self, message: str):
        super().__init__(f"hizoo: {message}")
        self.message = message


class HizooCLI(LightningCLI):
    """LightningCLI for hizoo's ``fit``; other subcommands behave as LightningCLI's."""

    run_dir: Path
    resume_from: Path | None = None

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # config.yaml of the latest start
        super().__init__(*args, **kwargs)

    # -- before the trainer exists: the run folder, what to resume, logger, checkpointing ------------------
    def instantiate_trainer(self, **kwargs):
        if self.subcommand != "fit":
            return super().instantiate_trainer(**kwargs)
        config = self._get(self.config_init, "trainer", default={})
        self.run_dir = Path(config.get("default_root_dir") or os.getcwd())
        checkpoint_dir = self.run_dir / "checkpoints"

        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        defaults = self.trainer_defaults.get("callbacks") or []
        defaults = list(defaults) if isinstance(defaults, (list, tuple)) else [defaults]
        checkpointers = [c for c in [*callbacks, *defaults] if isinstance(c, ModelCheckpoint)]
        if config.get("enable_checkpointing", True) is not False and not checkpointers:
            checkpointers = [RunCheckpoint()]
            callbacks += checkpointers
        for checkpointer in checkpointers:
            if checkpointer.dirpath is None:  # where `--ckpt_path last` looks, before Lightning's setup runs
                checkpointer.dirpath = str(checkpoint_dir)
        kwargs["callbacks"] = callbacks
        checkpoint_dirs = sorted({Path(c.dirpath) for c in checkpointers}) or [checkpoint_dir]

        self.resume_from = self._resume_checkpoint(self._get(self.config_init, "ckpt_path"), checkpoint_dirs)
        start_step = checkpoint_step(self.resume_from) if self.resume_from is not None else 0

        if config.get("logger") in (None, True):
            # TensorBoard logs in the run folder itself (no version_N subfolder); a resumed start hides what the
            # interrupted one logged after its checkpoint, so every step appears once.
            kwargs["logger"] = TensorBoardLogger(save_dir=str(self.run_dir), name="", version="",
                                                 default_hp_metric=False, purge_step=start_step)
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
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
            trainer.fit(model, datamodule=datamodule, ckpt_path=self.resume_from, **kwargs)
        except SIGTERMException:
            self._stopped_by_signal()
        state_dict = None
        if not trainer.interrupted:
            state_dict = model.model_state_for_export()  # every rank: expert parallelism gathers to rank 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()  # a live gloo/NCCL group aborts the interpreter at exit
        if trainer.interrupted or not trainer.is_global_zero:
            return
        self._check_trained()
        self.export(state_dict)

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

    def _check_trained(self) -> None:
        trainer = self.trainer
        if trainer.global_step == 0:
            raise RunFailed(
                f"the run took no optimizer step (trainer.max_steps={trainer.max_steps}, "
                f"max_epochs={trainer.max_epochs}, {trainer.num_training_batches} training batches): "
                "nothing was exported")
        ppl = trainer.callback_metrics.get("val/ppl")
        if ppl is not None and not math.isfinite(float(ppl)):
            raise RunFailed(
                f"validation perplexity is {float(ppl)} at step {trainer.global_step}: the model diverged, nothing "
                f"was exported (checkpoints stay in {self.run_dir / 'checkpoints'})")

    def export(self, state_dict: dict | None = None) -> Path:
        """The trained model as a self-contained Hugging Face directory in the run folder (models/export.py):
        weights (``state_dict``: the full weights when expert parallelism left this rank a shard), config with
        ``auto_map`` and the modeling code, special tokens, the tokenizer, and a model card with the training
        tokens and the validation perplexity."""
        trainer, data = self.trainer, self.datamodule
        out = self.run_dir / "hf_model"
        batch_size, seq_len = getattr(data, "batch_size", None), getattr(data, "seq_len", None)
        tokens = None
        if batch_size is not None and seq_len is not None:
            # each optimizer step: accumulate_grad_batches micro-batches per process of batch_size full sequences
            # (the training loader drops the last incomplete batch)
            tokens = trainer.global_step * trainer.accumulate_grad_batches * trainer.world_size * batch_size * seq_len
        ppl = trainer.callback_metrics.get("val/ppl")
        source = getattr(data, "source", None)
        card = ModelCardInfo(
            path=str(out), training_tokens=tokens, training_sequence_length=seq_len,
            validation_perplexity=float(ppl) if ppl is not None else None,
            training_data=f"`--data.source {source}`" if source is not None else None,
            source=f"trained from scratch with hizoo's `train.py` for {trainer.global_step} optimizer steps")
        export_pretrained(self.model.model, out, tokenizer=data.tokenizer, card=card, state_dict=state_dict)
        print(f"\nrun folder: {self.run_dir}   (tensorboard --logdir {self.run_dir})")
        print(f"exported Hugging Face model: {out}")
        if ppl is not None:
            print(f"validation perplexity: {float(ppl):.2f}")
        return out
