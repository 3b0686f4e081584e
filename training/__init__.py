"""Running a training job: the run folder, checkpoints that survive (atomic writes, safe loads, preemption)
and the LightningCLI that ties them to ``train.py``."""

from .checkpointing import AtomicCheckpointIO, RunCheckpoint
from .run_folder import RunFolderInUse, last_checkpoint

__all__ = ["AtomicCheckpointIO", "RunCheckpoint", "RunFolderInUse", "last_checkpoint"]
