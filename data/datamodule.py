"""LightningDataModule: documents -> BPE tokens -> fixed-length packed sequences with per-token domains."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .corpus import Document, check_max_files, file_documents, hub_documents, stdlib_documents
from .tokenizer import check_vocab_size, train_or_load_tokenizer


class PackedSequences(Dataset):
    """Rows of a [N, seq_len] token matrix with the matching [N, seq_len] domain ids."""

    def __init__(self, input_ids: torch.Tensor, domain_ids: torch.Tensor):
        self.input_ids, self.domain_ids = input_ids, domain_ids

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "domain_ids": self.domain_ids[i]}


class ResumableShuffle(Sampler[int]):
    """A permutation drawn from (seed, epoch) alone, so an epoch's order does not depend on what ran before;
    ``skip`` drops the first samples of the next pass (the batches a resumed run already trained on)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        skip, self.skip = self.skip, 0
        return iter(order[skip:].tolist())

    def __len__(self) -> int:
        return self.n - self.skip


class HizooDataModule(L.LightningDataModule):
    """Documents -> byte-level BPE tokens -> packed sequences of ``seq_len`` tokens with per-token domain ids.

    Every ``val_every``-th document (in corpus order) is held out for validation; the tokenizer is trained on
    the training documents only. Documents are joined with the end-of-text token and cut into sequences of
    ``seq_len`` tokens. The training order is a permutation drawn from ``seed`` and the epoch, and a run
    resumed from a checkpoint continues that order where it stopped.

    Args:
        source: "stdlib" (the embedded corpus: the Python standard library's source), a local file or folder or a
            list of them (.txt .md .py .jsonl .json .parquet; see data/corpus.py for domains), or "hf:NAME" for a
            datasets hub data set.
        max_files: at most this many files of the standard library or of each folder, evenly spaced (None: all).
        vocab_size: BPE vocabulary size, at least 258 (256 byte tokens, the end-of-text token, one merge).
        seq_len: tokens per training sequence (>= 2).
        batch_size: sequences per batch (>= 1).
        val_every: every val_every-th document is held out for validation (>= 2).
        seed: seed of the training order (>= 0).
        cache_dir: folder of the tokenizer cache.
        num_workers: data loader worker processes (>= 0).
        text_field: the field of .jsonl/.json/.parquet records (and hub data sets) that holds the text.
        skip_bad_files: skip corpus files that are not UTF-8 text or hold malformed records, with a warning,
            instead of stopping with an error naming the file.
    """

    def __init__(self, source: str | list[str] = "stdlib", max_files: int | None = None, vocab_size: int = 4096,
                 seq_len: int = 256, batch_size: int = 8, val_every: int = 20, seed: int = 0,
                 cache_dir: str = "runs/cache", num_workers: int = 0, text_field: str = "text",
                 skip_bad_files: bool = False):
        super().__init__()
        _check_source(source)
        check_max_files(max_files)
        check_vocab_size(vocab_size)
        for name, value, low in (("seq_len", seq_len, 2), ("batch_size", batch_size, 1), ("val_every", val_every, 2),
                                 ("seed", seed, 0), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if not isinstance(cache_dir, (str, Path)) or not str(cache_dir) or Path(cache_dir).is_file():
            raise ValueError(f"cache_dir={cache_dir!r} must name a folder (it is created if missing)")
        if not isinstance(text_field, str) or not text_field:
            raise ValueError(f"text_field={text_field!r} must be a non-empty string")
        if not isinstance(skip_bad_files, bool):
            raise ValueError(f"skip_bad_files={skip_bad_files!r} must be True or False")
        self.source, self.max_files, self.vocab_size = source, max_files, vocab_size
        self.seq_len, self.batch_size, self.val_every, self.seed = seq_len, batch_size, val_every, seed
        self.cache_dir, self.num_workers = Path(cache_dir), num_workers
        self.text_field, self.skip_bad_files = text_field, skip_bad_files
        self.tokenizer = None
        self.domain_names: list[str] = []

    def _documents(self) -> list[Document]:
        if self.source == "stdlib":
            return stdlib_documents(self.max_files)
        if isinstance(self.source, str) and self.source.startswith("hf:"):
            return hub_documents(self.source[len("hf:"):], text_field=self.text_field)
        return file_documents([self.source] if isinstance(self.source, str) else list(self.source),
                              text_field=self.text_field, skip_bad_files=self.skip_bad_files,
                              max_files=self.max_files)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        docs = self._documents()
        self.domain_names = sorted({d.domain for d in docs})
        val_docs = docs[self.val_every - 1:: self.val_every]
        train_docs = [d for i, d in enumerate(docs) if (i + 1) % self.val_every]
        if not val_docs or not train_docs:
            raise ValueError(f"the corpus has {len(docs)} document(s); with every val_every={self.val_every}-th held "
                             f"out for validation, the {'validation' if not val_docs else 'train'} split is empty")
        self.tokenizer = train_or_load_tokenizer([d.text for d in train_docs], self.vocab_size, self.cache_dir)
        self.train_set = self._pack(train_docs, "train")
        self.val_set = self._pack(val_docs, "validation")
        if len(self.train_set) < self.batch_size:
            raise ValueError(f"the train split has {len(self.train_set)} sequences of seq_len={self.seq_len} tokens, "
                             f"fewer than batch_size={self.batch_size}: not one training batch")

    def _pack(self, docs: list[Document], split: str) -> PackedSequences:
        domain_index = {name: i for i, name in enumerate(self.domain_names)}
        eos = self.tokenizer.eos_token_id
        ids, domains = [], []
        for doc in docs:
            tokens = self.tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [eos]
            ids.extend(tokens)
            domains.extend([domain_index[doc.domain]] * len(tokens))
        n = len(ids) // self.seq_len
        if n == 0:
            raise ValueError(f"the {split} split has {len(ids)} tokens, fewer than seq_len={self.seq_len}")
        ids = torch.tensor(ids[: n * self.seq_len]).view(n, self.seq_len)
        domains = torch.tensor(domains[: n * self.seq_len]).view(n, self.seq_len)
        return PackedSequences(ids, domains)

    def train_dataloader(self) -> DataLoader:
        sampler = ResumableShuffle(len(self.train_set), self.seed)
        if self.trainer is not None and self.trainer.fit_loop.restarting:
            # Resuming mid-epoch: Lightning restores the batch counter but starts a fresh iterator, so skip
            # the batches the interrupted run already consumed; the run then sees exactly the same data.
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready  # checkpoints are saved mid-batch-end
            sampler.set_epoch(self.trainer.current_epoch)
            sampler.skip = done * self.batch_size
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)


def _check_source(source) -> None:
    """"stdlib", "hf:NAME", or one or more paths (checked for existence when the corpus is read)."""
    entries = [source] if isinstance(source, (str, Path)) else source
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ValueError(f"source={source!r} must be 'stdlib', 'hf:NAME', a path or a non-empty list of paths")
    for entry in entries:
        if not isinstance(entry, (str, Path)) or not str(entry).strip():
            raise ValueError(f"source={source!r}: every entry must be a non-empty path, got {entry!r}")
    if str(entries[0]).startswith("hf:") and not str(entries[0])[3:].strip():
        raise ValueError(f"source={source!r}: 'hf:' must be followed by a data set name, e.g. 'hf:wikitext'")
    if len(entries) > 1 and any(str(e) == "stdlib" or str(e).startswith("hf:") for e in entries):
        raise ValueError(f"source={source!r}: 'stdlib' and 'hf:NAME' are whole corpora and cannot be listed with files")
