"""Checkpoints that survive: atomic writes in the run's own folder, safe loads with errors that name the file,
``last.ckpt`` at the final step, and a checkpoint when the scheduler says stop (SIGTERM, SIGUSR1).

- ``AtomicCheckpointIO`` (a Lightning CheckpointIO plugin): a checkpoint is written to a temporary file in
  the same directory, flushed and fsync'ed, then renamed over the target with ``os.replace`` (atomic on one
  filesystem) and the directory entry fsync'ed. A process killed mid-write leaves the previous file whole
  and at most a ``*.partial`` temporary, which the next run in that folder removes. Loads go through
  ``models.files.load_torch_file`` (``torch.load(weights_only=True)``, errors that name the file): a checkpoint
  cannot run code.
- ``RunCheckpoint`` (a ``ModelCheckpoint``): writes into ``<run folder>/checkpoints`` unless told otherwise,
  keeps ``last.ckpt`` (also at the final step, whatever ``every_n_train_steps``), and on SIGTERM/SIGUSR1
  saves ``last.ckpt`` at the step where Lightning stopped; the CLI then exits with status 128 + signal.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..models.files import load_torch_file

PARTIAL_SUFFIX = ".partial"  # temporary files of unfinished writes: ".<name>.<random>.partial"


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that ``path`` is always either its previous content or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power loss
    finally:
        os.close(directory)


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete the temporaries of writes that were killed before they finished; returns what was removed."""
    directory = Path(directory)
    if is_remote(directory) or not directory.is_dir():
        return []
    removed = []
    for tmp in directory.glob(f".*{PARTIAL_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO with atomic local writes and safe loads (see the module docstring).
    Remote paths (``s3://`` ...) are handed to Lightning's own implementation for writing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if is_remote(path):
            return super().save_checkpoint(checkpoint, path)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(f"loading {path} with weights_only=False is refused: hizoo checkpoints hold only "
                             "tensors and plain data, and an unsafe load could run code from the file")
        if is_remote(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        # weights_only=True, errors that name the file (Lightning moves the states to the device afterwards)
        return load_torch_file(path, "checkpoint")


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for hizoo runs (arguments as Lightning's; ``save_last`` defaults to True).

    - ``dirpath`` None: ``<trainer.default_root_dir>/checkpoints`` (the CLI sets it before ``--ckpt_path last``
      is looked up, so the next start of the same command finds the run's ``last.ckpt``).
    - ``last.ckpt`` is also written when training ends at a step no periodic save fell on.
    - SIGTERM and SIGUSR1 (what schedulers send before they stop a job; SIGUSR1 is left to Lightning's
      SLURM requeue handler where that is active): training stops at the end of the current optimizer step,
      on every rank, with ``last.ckpt`` saved at that step. ``stop_signal`` records which signal it was.
    - Temporaries of checkpoint writes that were killed (``*.partial``) are removed when a run starts.
    """

    def __init__(self, *args, save_last: bool | str | None = True, **kwargs):
        super().__init__(*args, save_last=save_last, **kwargs)
        self.stop_signal: int | None = None
        self.stop_checkpoint: str | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        with warnings.catch_warnings():  # a resumed run's folder holds checkpoints by design (fresh starts there
            warnings.filterwarnings("ignore", message=".*exists and is not empty")  # are refused by the CLI)
            super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero:
            remove_partial_writes(self.dirpath)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._requested_stop = 0  # the signal this process received, 0 for none
        self._checked_step = trainer.global_step
        self._install_stop_signals()

    def _install_stop_signals(self) -> None:
        """SIGTERM and SIGUSR1 only record that a stop was asked for; the stop happens at the end of the next
        optimizer step, on every rank at once (see ``on_train_batch_end``). This replaces Lightning's SIGTERM
        handler, which runs a collective inside the signal handler and so can pair it with another rank's
        gradient or buffer collective under DDP (seen: gloo "Connection closed by peer" on a 2-process run).
        Lightning restores the previous handlers when fit ends."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_stop_signal(signum, frame):
            self._requested_stop = self._requested_stop or int(signum)

        signal.signal(signal.SIGTERM, on_stop_signal)
        # Under SLURM with auto-requeue Lightning owns SIGUSR1 (checkpoint + requeue); elsewhere its default
        # action would kill the process with nothing saved.
        if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            if not (SLURMEnvironment.detect() and SLURMEnvironment().auto_requeue):
                signal.signal(signal.SIGUSR1, on_stop_signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == self._checked_step:  # inside an accumulation window: no step to stop after
            return
        self._checked_step = trainer.global_step
        signum = self._agreed_stop_signal(trainer)
        if signum:
            self.stop_signal = signum
            if self._last_global_step_saved != trainer.global_step or not self.last_model_path:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self.stop_checkpoint = self.last_model_path
            # Stop right after Lightning has logged this step's metrics: before a validation or the next batch.
            self._stop_pending = True

    def on_validation_start(self, trainer, pl_module) -> None:
        super().on_validation_start(trainer, pl_module)
        self._stop_if_pending()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._stop_if_pending()

    def _stop_if_pending(self) -> None:
        if getattr(self, "_stop_pending", False):
            self._stop_pending = False
            raise SIGTERMException()

    def _agreed_stop_signal(self, trainer) -> int:
        """The stop signal any rank received (one tiny all-reduce per optimizer step under DDP), else 0."""
        flag = torch.tensor([self._requested_stop], device=trainer.strategy.root_device)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if self.stop_signal or not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        # Lightning's own SIGTERM path (a signal before training started): save where it stopped
        self.stop_signal = signal.SIGTERM
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self.stop_checkpoint = self.last_model_path or None

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
