"""LightningDataModule: documents -> BPE tokens -> fixed-length packed sequences with per-token domains."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .corpus import Document, check_max_files, file_documents, hub_documents, stdlib_documents
from .prompts import read_prompts
from .shards import is_prepared
from .tokenizer import check_vocab_size, train_or_load_tokenizer
from . import scale


class PackedSequences(Dataset):
    """Rows of a [N, seq_len] token matrix with the matching [N, seq_len] domain ids."""

    def __init__(self, input_ids: torch.Tensor, domain_ids: torch.Tensor):
        self.input_ids, self.domain_ids = input_ids, domain_ids

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "domain_ids": self.domain_ids[i]}


class EpochShards(DistributedSampler):
    """The training order: one permutation of the N sequences per epoch, drawn from (seed, epoch) alone, dealt
    to the ``num_replicas`` data-parallel ranks in turn (rank r takes positions r, r + W, r + 2W, ... of the
    permutation, so global batch t is permutation[t·B·W : (t+1)·B·W]). Each rank gets ⌊N / W⌋ samples; the
    N mod W left over at the end of an epoch are skipped, as DistributedSampler with ``drop_last`` does.

    ``start`` skips the first ``start`` samples of the permutation (the part of the epoch a resumed run has
    already trained on); the loader below sets it from its saved state. Being a DistributedSampler, Lightning
    uses it as it is under DDP instead of wrapping it."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0  # samples of this epoch's permutation already trained on (all ranks together)

    def __iter__(self):
        # seed·100003 + epoch: (seed 0, epoch 1) and (seed 1, epoch 0) give different orders
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)[: self.total_size]  # [W·⌊N/W⌋]
        return iter(order[self.start + self.rank:: self.num_replicas].tolist())


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is part of the training state: Lightning saves
    ``state_dict()`` in every checkpoint (with the fit loop) and calls ``load_state_dict()`` before a resumed
    run iterates, so the run continues with the next unseen batch, on every rank, whatever ``num_workers``.

    ``len()`` is always the full epoch's batch count (Lightning's batch counter, restored from the checkpoint,
    counts the batches already done); a resumed epoch yields only the rest. Batches are counted when they reach
    the training loop (in this process), not when workers load them ahead."""

    def __init__(self, dataset: Dataset, batch_size: int, sampler: EpochShards, **kwargs):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self._batches_done = 0  # batches of the current epoch handed to the training loop
        self._resume: dict | None = None

    def __iter__(self):
        sampler: EpochShards = self.sampler
        start = 0
        if self._resume is not None and self._resume["epoch"] == sampler.epoch:
            start = self._resume["batches_done"]
        self._resume = None
        sampler.start = start * self.batch_size * sampler.num_replicas
        self._batches_done = start
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        sampler: EpochShards = self.sampler
        return {"epoch": sampler.epoch, "batches_done": self._batches_done, "batch_size": self.batch_size,
                "world_size": sampler.num_replicas, "dataset_size": len(self.dataset), "seed": sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        sampler: EpochShards = self.sampler
        now = {"batch_size": self.batch_size, "world_size": sampler.num_replicas,
               "dataset_size": len(self.dataset), "seed": sampler.seed}
        changed = [f"{key}: {state[key]} in the checkpoint, {value} now" for key, value in now.items()
                   if key in state and state[key] != value]
        if changed:
            raise ValueError("the checkpoint's data position cannot be continued exactly ("
                             + "; ".join(changed) + "): resume with the same data, batch size and number of "
                             "processes, or start a new run")
        self._resume = {"epoch": state["epoch"], "batches_done": state["batches_done"]}


class HizooDataModule(L.LightningDataModule):
    """Documents -> byte-level BPE tokens -> packed sequences of ``seq_len`` tokens with per-token domain ids.

    Every ``val_every``-th document (in corpus order) is held out for validation; the tokenizer is trained on
    the training documents only. With ``test_fraction`` > 0 that fraction of the held-out documents (evenly
    spread: held-out document j, counted from 0, is a test document when ⌊(j+1)·f⌋ > ⌊j·f⌋) forms the test split
    and the rest stays validation: the training documents, the tokenizer and the training order are the same
    whatever ``test_fraction``, only the validation split shrinks. It is 0 by default so that existing runs keep
    their validation split; a run that is to report a test number trains with it, and ``test`` refuses a
    checkpoint whose run had another ``test_fraction`` (its validation documents would be tested on). Documents are joined with the end-of-text token and cut into sequences of
    ``seq_len`` tokens. The training order is a permutation drawn from ``seed`` and the epoch, dealt to the
    data-parallel ranks; the loader's position is saved in every checkpoint, so a resumed run (DDP included)
    continues that order with the next unseen batch. A resumed run must read the same data the same way:
    ``load_state_dict`` refuses a checkpoint written with other data settings, naming them.

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
        tokenizer: a Hugging Face tokenizer (local folder or hub name) instead of the trained BPE (vocab_size is
            then unused; the model's vocabulary is len(tokenizer)).
        weights: domain -> proportion of the training sequences (data/mixture.py); validation keeps the natural
            split.
        streaming: read "hf:NAME" or one jsonl/json/parquet file as a stream, tokenized and packed on the fly
            (data/streaming.py; needs ``tokenizer``).
        val_sequences: with streaming, the validation set is the first val_sequences held-out sequences.
        test_fraction: the fraction of the held-out documents that forms the test split, in [0, 1) (see above;
            in-memory corpora only).
        predict_prompts: the prompts file of ``predict`` (data/prompts.py: .txt, one prompt per line, or .jsonl).
        prompt_field: the field of a .jsonl prompts file that holds the prompt.

    At scale (data/scale.py): ``source`` may also be a folder written by ``python -m hizoo.data.prepare``, read
    through ``np.memmap``; its tokenizer and split are the folder's.
    """

    def __init__(self, source: str | list[str] = "stdlib", max_files: int | None = None, vocab_size: int = 4096,
                 seq_len: int = 256, batch_size: int = 8, val_every: int = 20, seed: int = 0,
                 cache_dir: str = "runs/cache", num_workers: int = 0, text_field: str = "text",
                 skip_bad_files: bool = False, tokenizer: str | None = None, weights: dict[str, float] | None = None,
                 streaming: bool = False, val_sequences: int = 512, test_fraction: float = 0.0,
                 predict_prompts: str | None = None, prompt_field: str = "prompt"):
        super().__init__()
        scale.check_arguments(source, tokenizer, weights, streaming, val_sequences)
        _check_test_and_predict(source, streaming, test_fraction, predict_prompts, prompt_field)
        self.test_fraction, self.predict_prompts, self.prompt_field = float(test_fraction), predict_prompts, prompt_field
        self.tokenizer_name, self.weights, self.streaming, self.val_sequences = tokenizer, weights, streaming, val_sequences
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
        if stage == "predict":
            self.prompts = read_prompts(self.predict_prompts, self.prompt_field)  # before the corpus: fail fast
        if self.tokenizer is not None:
            return
        if scale.setup(self):  # a prepared folder or a stream
            return
        docs = self._documents()
        self.domain_names = sorted({d.domain for d in docs})
        held_out = docs[self.val_every - 1:: self.val_every]
        train_docs = [d for i, d in enumerate(docs) if (i + 1) % self.val_every]
        val_docs, test_docs = split_held_out(held_out, self.test_fraction)
        if not val_docs or not train_docs:
            raise ValueError(f"the corpus has {len(docs)} document(s); with every val_every={self.val_every}-th held "
                             f"out for validation, the {'validation' if not val_docs else 'train'} split is empty")
        if self.test_fraction and not test_docs:
            raise ValueError(f"test_fraction={self.test_fraction}: the {len(held_out)} held-out document(s) give no "
                             "test document; raise test_fraction or hold out more (lower val_every)")
        self.tokenizer = (scale.load_tokenizer(self.tokenizer_name) if self.tokenizer_name else
                          train_or_load_tokenizer([d.text for d in train_docs], self.vocab_size, self.cache_dir))
        self.train_set = self._pack(train_docs, "train")
        self.val_set = self._pack(val_docs, "validation")
        self.test_set = self._pack(test_docs, "test") if test_docs else None
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
        if self.streaming or self.weights is not None:  # loaders whose position Lightning saves (data/loader.py)
            return scale.resumable_train_loader(self)
        world_size, rank = 1, 0
        if self.trainer is not None:
            world_size, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = EpochShards(self.train_set, num_replicas=world_size, rank=rank, seed=self.seed)
        if len(sampler) < self.batch_size:
            raise ValueError(
                f"the training split has {len(self.train_set)} sequences of seq_len={self.seq_len} tokens, "
                f"{len(sampler)} per process over {world_size} process(es): fewer than one batch of "
                f"batch_size={self.batch_size}, so no training step could run; lower data.batch_size or data.seq_len, "
                "or use more data")
        return ResumableLoader(self.train_set, self.batch_size, sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        if getattr(self, "test_set", None) is None:
            raise ValueError(f"test_fraction={self.test_fraction}: this data module has no test split. Train the run "
                             "with --data.test_fraction F (e.g. 0.5: half of the held-out documents become the test "
                             "split, the rest validation) and test it with the same value")
        return DataLoader(self.test_set, batch_size=self.batch_size, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        """One prompt per batch, ``{"index", "prompt", "input_ids" [1, P]}``, in file order (the tokenizer's
        encoding of the prompt, as ``tokenizer(prompt)`` gives it)."""
        if getattr(self, "prompts", None) is None:
            self.prompts = read_prompts(self.predict_prompts, self.prompt_field)
        items = []
        for index, prompt in enumerate(self.prompts):
            ids = self.tokenizer(prompt)["input_ids"]
            if not ids:
                raise ValueError(f"prompt {index} ({prompt!r}) of {self.predict_prompts} encodes to no tokens")
            items.append({"index": index, "prompt": prompt, "input_ids": torch.tensor([ids])})
        return DataLoader(items, batch_size=None)  # items as they are: a batch of one prompt

    # Lightning saves these with every checkpoint and hands them back on resume, before the first batch.
    _RESUME_FIELDS = ("source", "max_files", "vocab_size", "seq_len", "batch_size", "val_every", "seed", "text_field",
                      "skip_bad_files", "tokenizer", "weights", "streaming", "val_sequences", "test_fraction")
    # What decides the documents of each split and the tokenizer: validate/test/predict with a checkpoint must
    # read its run's splits (a test split that held its run's validation documents would not be held out).
    _SPLIT_FIELDS = ("source", "max_files", "vocab_size", "val_every", "text_field", "skip_bad_files", "tokenizer",
                     "streaming", "test_fraction")
    _DEFAULTS = {"test_fraction": 0.0}  # fields checkpoints of earlier versions lack, with the value they ran with

    def state_dict(self) -> dict:
        source = self.source if isinstance(self.source, str) else list(self.source)
        state = {name: getattr(self, name) for name in self._RESUME_FIELDS if name != "tokenizer"}
        return state | {"source": source, "tokenizer": self.tokenizer_name}

    def load_state_dict(self, state: dict) -> None:
        now, state = self.state_dict(), {**self._DEFAULTS, **state}
        fitting = self.trainer is None or self.trainer.state.fn in (None, "fit")
        fields = self._RESUME_FIELDS if fitting else self._SPLIT_FIELDS
        changed = [f"data.{name}: {state[name]!r} in the checkpoint, {now[name]!r} now"
                   for name in fields if name in state and state[name] != now[name]]
        if changed and fitting:
            raise ValueError("resuming with data settings that differ from the checkpoint's run: "
                             + "; ".join(changed) + ". A resumed run continues the same run: drop these overrides, "
                             "or start a new run in another folder (--trainer.default_root_dir)")
        if changed:
            stage = getattr(self.trainer.state.fn, "value", self.trainer.state.fn)
            raise ValueError(f"{stage} with data settings that differ from the checkpoint's run: "
                             + "; ".join(changed) + ". The splits (and the tokenizer) must be the run's own, or the "
                             "held-out documents are not the ones it never trained or validated on: use the run's "
                             "data settings")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        scale.mark_consumed(self)  # a training step received a batch: the resumable loader's position advances
        return batch


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


def split_held_out(held_out: list, test_fraction: float) -> tuple[list, list]:
    """(validation, test) documents of the held-out ones: held-out document j is a test document when
    ⌊(j+1)·f⌋ > ⌊j·f⌋, which spreads ⌊n·f⌋ of n test documents evenly (f = 0.5: the 2nd, 4th, ...)."""
    val, test = [], []
    for j, doc in enumerate(held_out):
        (test if math.floor((j + 1) * test_fraction) > math.floor(j * test_fraction) else val).append(doc)
    return val, test


def _check_test_and_predict(source, streaming, test_fraction, predict_prompts, prompt_field) -> None:
    """Construction-time checks of the test split and the prompts file settings (the file is read by predict)."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not math.isfinite(test_fraction) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r} must be a number in [0, 1): the fraction of the held-out "
                         "documents that forms the test split (0: no test split)")
    if test_fraction and (streaming or is_prepared(source)):
        raise ValueError(f"test_fraction={test_fraction!r}: a test split is carved from the held-out documents of an "
                         "in-memory corpus; a stream or a prepared folder has no test split (set test_fraction=0)")
    if predict_prompts is not None and (not isinstance(predict_prompts, (str, Path)) or not str(predict_prompts).strip()):
        raise ValueError(f"predict_prompts={predict_prompts!r} must be the path of a prompts file (.txt or .jsonl) "
                         "or null")
    if not isinstance(prompt_field, str) or not prompt_field:
        raise ValueError(f"prompt_field={prompt_field!r} must be a non-empty string (the prompt's field in .jsonl)")
