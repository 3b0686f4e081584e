"""Load a HizooForCausalLM from an exported HF directory or a Lightning checkpoint, for analysis."""

from __future__ import annotations

from pathlib import Path

import torch


def load_model(path: str | Path):
    """HF directory (config.json + weights) or Lightning ``.ckpt`` (with ``hizoo_config`` and ``model.*`` keys)
    -> HizooForCausalLM on CPU in fp32. Uses ``models.lightning.load_model_from_checkpoint`` when it exists."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or model directory at {path}")
    try:
        from ..models.lightning import load_model_from_checkpoint  # noqa: F401
    except ImportError:
        load_model_from_checkpoint = None
    if load_model_from_checkpoint is not None:
        return load_model_from_checkpoint(str(path)).float()
    from transformers import AutoModelForCausalLM

    from ..models.configuration import HizooConfig
    from ..models.modeling import HizooForCausalLM

    if path.is_dir():  # the Auto* classes know hizoo: importing this package registered them
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is a directory without config.json: not an exported HF model")
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt or not a torch file
        raise ValueError(f"cannot read {path} as a Lightning checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or "hizoo_config" not in ckpt or "state_dict" not in ckpt:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a hizoo Lightning checkpoint: needs 'hizoo_config' and 'state_dict' "
                         f"(found {keys})")
    model = HizooForCausalLM(HizooConfig(**ckpt["hizoo_config"]))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if not state:
        raise ValueError(f"{path}: state_dict has no 'model.*' keys")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("lm_head.weight",) or not model.config.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.float()
