"""Byte-level BPE tokenizer trained offline with ``tokenizers`` and cached on disk by corpus hash and vocab size."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def corpus_hash(texts: list[str], vocab_size: int) -> str:
    h = hashlib.sha256(str(vocab_size).encode())
    for text in texts:
        h.update(hashlib.sha256(text.encode("utf-8", errors="replace")).digest())
    return h.hexdigest()[:16]


def train_or_load_tokenizer(texts: list[str], vocab_size: int, cache_dir: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer for (texts, vocab_size): loaded from ``cache_dir/<hash>`` if trained before, else trained
    (byte-level BPE, so every byte sequence is encodable) and saved there as an HF tokenizer."""
    path = Path(cache_dir) / f"bpe-{vocab_size}-{corpus_hash(texts, vocab_size)}"
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)
    hf.save_pretrained(path)
    return hf
