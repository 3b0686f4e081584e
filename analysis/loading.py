"""Load a HizooForCausalLM from an exported HF directory or a Lightning checkpoint, for analysis."""

from __future__ import annotations

from pathlib import Path

from ..models.lightning import load_model_from_checkpoint


def load_model(path: str | Path):
    """HF directory (config.json + weights) or Lightning ``.ckpt`` (``hizoo_config`` + ``model.*`` state) ->
    HizooForCausalLM on CPU in fp32; missing, corrupt or mismatched files raise a clear error."""
    return load_model_from_checkpoint(path).float()
