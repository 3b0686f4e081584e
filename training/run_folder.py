"""A run is one folder, ``trainer.default_root_dir`` (e.g. ``runs/quickstart``):

    runs/quickstart/
        config.yaml                  the full configuration of the latest start (LightningCLI)
        events.out.tfevents.*        TensorBoard logs, one file per start; a resumed start hides the steps
                                     the interrupted one logged after its checkpoint (purge_step)
        hparams.yaml
        checkpoints/
            last.ckpt                the newest state: periodic, at the final step, on SIGTERM/SIGUSR1
            epoch=E-step=S.ckpt      periodic checkpoints (ModelCheckpoint's every_n_train_steps)
        hf_model/                    the exported Hugging Face model, after a finished run
        config_<subcommand>.yaml     the configuration of the latest validate/test/predict of its checkpoints
        predictions.jsonl            what the latest ``predict`` generated

``--ckpt_path last`` resumes from ``checkpoints/last.ckpt`` of that folder (or a SLURM ``hpc_ckpt_N.ckpt``
there, whichever is newer). Starting without it in a folder that already holds checkpoints is refused, so a
finished or interrupted run is never overwritten by accident.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..models.files import peek_torch_file

CHECKPOINT_DIR = "checkpoints"
_LAST = re.compile(r"^last(-v?\d+)?\.ckpt$")  # Lightning's names for "last" (last.ckpt, last-v1.ckpt)
_HPC = re.compile(r"^hpc_ckpt_\d+\.ckpt$")  # Lightning's SLURM requeue checkpoints, in default_root_dir


def checkpoint_files(run_dir: Path, checkpoint_dirs: list[Path] | None = None) -> list[Path]:
    """Every complete checkpoint of the run (not the ``*.partial`` temporaries of unfinished writes)."""
    dirs = checkpoint_dirs or [run_dir / CHECKPOINT_DIR]
    found = [p for d in dirs if d.is_dir() for p in d.glob("*.ckpt") if p.is_file()]
    found += [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if _HPC.match(p.name)] if run_dir.is_dir() else []
    return sorted(found)


def last_checkpoint(run_dir: Path, checkpoint_dirs: list[Path] | None = None) -> Path | None:
    """What ``--ckpt_path last`` resumes from: the most recently written ``last*.ckpt`` or ``hpc_ckpt_N.ckpt``."""
    candidates = [p for p in checkpoint_files(run_dir, checkpoint_dirs) if _LAST.match(p.name) or _HPC.match(p.name)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was written at (read lazily: the tensors are not loaded)."""
    checkpoint = peek_torch_file(path, "checkpoint")
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise ValueError(f"checkpoint {path} has no 'global_step': not a Lightning training checkpoint")
    return int(checkpoint["global_step"])


class RunFolderInUse(FileExistsError):
    """A fresh start in a folder that already holds a run's checkpoints."""
