"""Running a training job: the run folder, checkpoints that survive (atomic writes, safe loads, preemption),
the Hugging Face export as a callback, and the LightningCLI that ties them to ``train.py``."""

from .checkpointing import AtomicCheckpointIO, RunCheckpoint
from .export import HFExportCallback
from .run_folder import RunFolderInUse, last_checkpoint

__all__ = ["AtomicCheckpointIO", "HFExportCallback", "RunCheckpoint", "RunFolderInUse", "last_checkpoint"]
