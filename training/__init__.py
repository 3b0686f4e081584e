"""Running a training job: the run folder, checkpoints that survive (atomic writes, safe loads, preemption)
and the LightningCLI that ties them to ``train.py``."""

from .checkpointing import AtomicCheckpointIO, CheckpointReadError, RunCheckpoint, safe_torch_load
from .run_folder import RunFolderInUse, last_checkpoint

__all__ = ["AtomicCheckpointIO", "CheckpointReadError", "RunCheckpoint", "RunFolderInUse", "last_checkpoint",
           "safe_torch_load"]
