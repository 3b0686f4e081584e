"""Pretrained Hugging Face tokenizers (``--data.tokenizer``, ``prepare --tokenizer``): any tokenizer that
``AutoTokenizer.from_pretrained`` loads, from a local folder (e.g. OLMoE's, saved with ``save_pretrained``) or
from the hub where it is reachable. The trained byte-level BPE of ``data.tokenizer`` stays the default.

Documents are joined with the tokenizer's end-of-text token, so a tokenizer without ``eos_token`` is refused.
The model's vocabulary size is ``len(tokenizer)`` (base vocabulary plus added tokens).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(name_or_path)`` (no remote code) with errors that name the tokenizer."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"tokenizer={name_or_path!r}: expected a local folder or a hub name")
    path = Path(name_or_path)
    if not path.exists() and (path.is_absolute() or name_or_path.startswith((".", "~"))):
        raise ValueError(f"tokenizer={name_or_path!r} could not be loaded: the folder does not exist")
    if path.exists() and not path.is_dir():
        raise ValueError(f"tokenizer={name_or_path!r} is a file; pass the folder that save_pretrained wrote")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception as err:  # missing files, offline hub, unknown name: transformers raises several types
        where = "the local folder" if path.is_dir() else "a local folder nor a name reachable on the hub"
        raise ValueError(f"tokenizer={name_or_path!r} could not be loaded ({'from ' if path.is_dir() else 'is neither '}"
                         f"{where}): {type(err).__name__}: {err}") from err
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer={name_or_path!r} has no eos_token: hizoo joins documents with the end-of-text "
                         f"token; save the tokenizer with one (tokenizer.eos_token = ...)")
    return tokenizer


def id_limit(tokenizer: PreTrainedTokenizerBase) -> int:
    """One more than the largest token id the tokenizer can produce (the embedding rows a model needs)."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)


def folder_sha256(folder: str | Path) -> str:
    """sha256 over the names and bytes of every file in ``folder`` (a saved tokenizer), in sorted order."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(file.relative_to(folder)).encode() + b"\0")
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()
