"""Byte-level BPE tokenizer trained offline with ``tokenizers`` and cached on disk by corpus hash and vocab size.

Pre-tokenization is GPT-2's byte-level split (words, numbers, punctuation runs, whitespace runs), then every
piece longer than ``MAX_PIECE_CHARS`` byte-level characters (= bytes) is cut into chunks of that length. BPE
training costs grow with the square of a piece's length (each merge rescans the piece), so without the cut a
long run without whitespace (minified code, base64, a 5 MB one-line file) never finishes; with it training time
is linear in the corpus size. The cut is part of the saved pre-tokenizer, so encoding applies it identically.
Pieces of normal text are far shorter than the cut; a token can never be longer than it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS]
BYTE_ALPHABET = 256  # byte-level BPE starts from one token per byte
MIN_VOCAB_SIZE = BYTE_ALPHABET + len(SPECIAL_TOKENS) + 1  # the alphabet, the special tokens and one merge
MAX_PIECE_CHARS = 64
# Part of the cache key: a cached tokenizer of another version tokenizes differently and is not reused.
# 2: pieces longer than MAX_PIECE_CHARS are cut (1: uncut).
TOKENIZER_VERSION = 2


def corpus_hash(texts: list[str], vocab_size: int) -> str:
    h = hashlib.sha256(f"bpe-v{TOKENIZER_VERSION}-{vocab_size}".encode())
    for text in texts:
        h.update(hashlib.sha256(text.encode("utf-8", errors="replace")).digest())
    return h.hexdigest()[:16]


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """GPT-2's byte-level split, then pieces cut to at most MAX_PIECE_CHARS characters (module docstring)."""
    return pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False),
                                    pre_tokenizers.FixedLength(length=MAX_PIECE_CHARS)])


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE on ``texts`` (every byte sequence is encodable), as an HF tokenizer with EOS = BOS = PAD."""
    check_vocab_size(vocab_size)
    if not any(text.strip() for text in texts):
        raise ValueError(f"cannot train a tokenizer: the {len(texts)} training texts contain no text")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def check_vocab_size(vocab_size: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size!r} must be an integer >= {MIN_VOCAB_SIZE}: byte-level BPE starts "
                         f"from {BYTE_ALPHABET} byte tokens and {len(SPECIAL_TOKENS)} special token(s) and needs "
                         f"room for at least one merge")


def train_or_load_tokenizer(texts: list[str], vocab_size: int, cache_dir: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer for (texts, vocab_size): loaded from ``cache_dir/<hash>`` if trained before, else trained and
    saved there as an HF tokenizer. The entry is written to a temporary folder and renamed into place, so an
    interrupted write leaves no partial entry; an unreadable entry (truncated or edited files) is reported with
    the file's path in a warning, and rebuilt."""
    check_vocab_size(vocab_size)
    path = Path(cache_dir) / f"bpe-{vocab_size}-{corpus_hash(texts, vocab_size)}"
    corrupt = False
    if path.exists():
        tokenizer, problem = _load_cached(path)
        if tokenizer is not None:
            return tokenizer
        warnings.warn(f"tokenizer cache entry is unreadable, rebuilding it: {problem}", stacklevel=2)
        corrupt = True
    tokenizer = train_tokenizer(texts, vocab_size)
    _save_atomically(tokenizer, path, replace=corrupt)
    return tokenizer


def _load_cached(path: Path) -> tuple[PreTrainedTokenizerFast | None, str]:
    """(tokenizer, "") if ``path`` holds a readable hizoo tokenizer, else (None, what is wrong, naming the file)."""
    if not path.is_dir():
        return None, f"{path} is not a directory"
    if not (path / "tokenizer.json").is_file():
        return None, f"{path / 'tokenizer.json'} is missing"
    for file in sorted(path.glob("*.json")):  # name the broken file instead of a bare JSONDecodeError
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            return None, f"{file} is not valid JSON ({type(err).__name__}: {err})"
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    except Exception as err:  # tokenizers/transformers raise several types for files they cannot interpret
        return None, f"{path} cannot be loaded ({type(err).__name__}: {err})"
    if tokenizer.eos_token != EOS or tokenizer.convert_tokens_to_ids(EOS) is None:
        return None, f"{path / 'tokenizer_config.json'} does not declare the end-of-text token {EOS!r}"
    return tokenizer, ""


def _save_atomically(tokenizer: PreTrainedTokenizerFast, path: Path, replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))  # same filesystem: rename is atomic
    try:
        tokenizer.save_pretrained(staging)
        if replace and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        try:
            os.replace(staging, path)
        except OSError:
            if not (path / "tokenizer.json").is_file():
                raise
            # another process (a DDP rank) trained the same tokenizer and renamed its copy first: keep that one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
