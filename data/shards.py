"""A prepared corpus folder (written by ``python -m hizoo.data.prepare``) read through ``np.memmap``.

Layout of the folder::

    metadata.json                       what follows, with counts, sizes and sha256 of every file
    tokenizer/                          the tokenizer the tokens were made with (save_pretrained)
    train-00000.tokens.bin              flat token ids of shard 0's training documents (uint16 or uint32)
    train-00000.domains.bin             one domain id per token (uint16), index into metadata["domains"]
    validation-00000.tokens.bin  ...    the same for the held-out documents

Within a split the shards, read in order, are the split's documents in corpus order, each followed by the
end-of-text token: exactly the token stream ``HizooDataModule`` packs in memory, so sequence ``i`` of a split
is tokens ``[i * seq_len, (i + 1) * seq_len)`` of that stream (the incomplete tail is dropped). Reading a
sequence maps and reads only its own bytes, so memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

FORMAT = "hizoo-token-shards"
VERSION = 1
METADATA = "metadata.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "validation")
DOMAIN_DTYPE = "uint16"


def token_dtype(id_limit: int) -> str:
    """uint16 when every id fits (ids < 65536), else uint32."""
    if id_limit <= 2**16:
        return "uint16"
    if id_limit <= 2**32:
        return "uint32"
    raise ValueError(f"a vocabulary of {id_limit} ids does not fit in uint32")


def shard_file(split: str, index: int, kind: str) -> str:
    return f"{split}-{index:05d}.{kind}.bin"


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_prepared(source) -> bool:
    """Whether ``source`` names a prepared folder (a directory holding ``metadata.json``)."""
    return isinstance(source, (str, Path)) and (Path(source) / METADATA).is_file()


def read_metadata(folder: str | Path) -> dict:
    """The folder's metadata, with errors that name the file when it is missing, corrupt or of another format."""
    path = Path(folder) / METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {folder} is not a prepared corpus folder (write one "
                                f"with python -m hizoo.data.prepare)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupt ({err}); prepare the corpus again") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not hizoo token-shard metadata (format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                         f"expected {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} has format version {meta.get('version')!r}; this hizoo reads version {VERSION}")
    return meta


def verify_files(folder: str | Path, meta: dict, hashes: bool = False) -> None:
    """Every shard file exists with the size its token count implies (and, with ``hashes``, its sha256)."""
    folder = Path(folder)
    for shard in meta["shards"]:
        for split, entry in shard["splits"].items():
            for kind, dtype in (("tokens", meta["dtype"]), ("domains", DOMAIN_DTYPE)):
                path = folder / entry[kind]
                expected = entry["num_tokens"] * np.dtype(dtype).itemsize
                if not path.is_file():
                    raise FileNotFoundError(f"shard file {path} listed in {folder / METADATA} is missing")
                if path.stat().st_size != expected:
                    raise ValueError(f"shard file {path} has {path.stat().st_size} bytes, expected {expected} "
                                     f"({entry['num_tokens']} tokens of {dtype}); prepare the corpus again")
                if hashes and file_sha256(path) != entry[f"{kind}_sha256"]:
                    raise ValueError(f"shard file {path} does not match its sha256 in {folder / METADATA}")


class SplitTokens:
    """One split's token and domain files read as one flat stream: ``read(start, stop)`` -> (tokens, domains).

    Each read maps the files it needs with ``np.memmap`` and unmaps them when done (as nanoGPT does per
    batch): a long-lived map keeps every page it ever touched in the process's resident memory (with large
    page-cache folios, hundreds of KB per random read), so resident memory would grow with the corpus read.
    The pages stay in the kernel's page cache, shared and reclaimable, so rereads are still served from memory.
    The object holds only paths and offsets, so it pickles small into DataLoader workers."""

    def __init__(self, folder: str | Path, meta: dict, split: str):
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {SPLITS}")
        folder = Path(folder)
        entries = [shard["splits"][split] for shard in meta["shards"] if shard["splits"][split]["num_tokens"] > 0]
        self.split = split
        self.files = [(str(folder / e["tokens"]), str(folder / e["domains"])) for e in entries]
        self.offsets = np.cumsum([0] + [e["num_tokens"] for e in entries])  # [shards + 1] start of each shard
        self.dtype = np.dtype(meta["dtype"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and domain ids ``[start, stop)`` of the split, as int64 arrays (copies)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"tokens [{start}, {stop}) outside the {self.split} split's {len(self)} tokens")
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        tokens, domains = [], []
        while start < stop:  # a range may span shard boundaries
            lo, hi = int(self.offsets[shard]), int(self.offsets[shard + 1])
            end = min(stop, hi)
            token_file, domain_file = self.files[shard]
            # astype copies out of the maps, which are unmapped when they go out of scope here
            tokens.append(np.memmap(token_file, dtype=self.dtype, mode="r")[start - lo: end - lo].astype(np.int64))
            domains.append(np.memmap(domain_file, dtype=DOMAIN_DTYPE, mode="r")[start - lo: end - lo].astype(np.int64))
            start, shard = end, shard + 1
        if not tokens:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(tokens), np.concatenate(domains)


class MemmapSequences(Dataset):
    """Fixed-length sequences of a prepared split: item ``i`` is tokens ``[i * seq_len, (i + 1) * seq_len)``,
    as ``{"input_ids": [seq_len] int64, "domain_ids": [seq_len] int64}`` (the in-memory ``PackedSequences``'
    items). Map-style, so any sampler (shuffle, DDP sharding, domain mixture) indexes it."""

    def __init__(self, tokens: SplitTokens, seq_len: int):
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len} must be >= 2")
        self.tokens, self.seq_len = tokens, seq_len
        self.num_sequences = len(tokens) // seq_len
        if self.num_sequences == 0:
            raise ValueError(f"the {tokens.split} split has {len(tokens)} tokens, fewer than seq_len={seq_len}")

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < self.num_sequences:
            raise IndexError(f"sequence {i} outside the {self.num_sequences} sequences of the {self.tokens.split} split")
        tokens, domains = self.tokens.read(i * self.seq_len, (i + 1) * self.seq_len)
        return {"input_ids": torch.from_numpy(tokens), "domain_ids": torch.from_numpy(domains)}

    def domain_rows(self, start: int, stop: int) -> np.ndarray:
        """Domain ids of sequences ``[start, stop)`` as a ``[stop - start, seq_len]`` array."""
        _, domains = self.tokens.read(start * self.seq_len, stop * self.seq_len)
        return domains.reshape(stop - start, self.seq_len)


def load_prepared(folder: str | Path, seq_len: int):
    """(tokenizer, domain names, train set, validation set, metadata) of a prepared folder; the tokenizer is
    checked against the hash the metadata recorded, and every shard file against its size."""
    from .pretrained import folder_sha256, load_tokenizer

    folder = Path(folder)
    meta = read_metadata(folder)
    verify_files(folder, meta)
    tok_dir = folder / TOKENIZER_DIR
    if not tok_dir.is_dir() or folder_sha256(tok_dir) != meta["tokenizer"]["sha256"]:
        raise ValueError(f"{tok_dir} is missing or differs from the tokenizer the shards were made with "
                         f"(sha256 in {folder / METADATA}); prepare the corpus again")
    tokenizer = load_tokenizer(str(tok_dir))
    train = MemmapSequences(SplitTokens(folder, meta, "train"), seq_len)
    validation = MemmapSequences(SplitTokens(folder, meta, "validation"), seq_len)
    return tokenizer, list(meta["domains"]), train, validation, meta
