"""Streaming corpora (``--data.streaming true``): documents read from a ``datasets`` IterableDataset (a hub
data set ``hf:NAME``, or a local jsonl/json/parquet file), tokenized and packed on the fly, for corpora too
large to prepare. Nothing is downloaded ahead of training beyond what ``datasets`` streams.

Packing is ``HizooDataModule``'s (documents joined with the end-of-text token, cut into ``seq_len`` tokens;
the incomplete tail of the stream is dropped), so a stream yields the same sequences as the in-memory
packing of the same documents. There is no train/validation split rule on a stream: the training stream is
the ``train`` split and validation is the stream's ``validation`` split, or the first ``val_sequences``
sequences of a separate pass over the training stream when no such split exists (see ``HizooDataModule``).

**Position.** After every sequence the dataset knows where the next one starts: the ``datasets`` state
(``IterableDataset.state_dict``, datasets >= 3) just before the document holding the next unread token, and
how many tokens of that document were already used. ``load_state_dict`` continues from there exactly: that
document is read and tokenized again and its used tokens skipped. Under DDP each rank streams its own part
(``datasets.distributed.split_dataset_by_node``: whole shards when their number divides by the world size,
else every W-th document) and repeats it endlessly, so that no rank ends an epoch alone; a single process
reads the stream once per epoch, and iterating again after the stream ended starts it from the beginning.
"""

from __future__ import annotations

import copy
from collections import deque
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .sources import RECORD_SUFFIXES, load_hub_table


def open_stream(source: str, split: str = "train"):
    """(``datasets.IterableDataset``, domain name) of a streaming source: ``hf:NAME`` or a local record file."""
    if not isinstance(source, str):
        raise ValueError(f"source={source!r}: streaming reads one source, 'hf:NAME' or a jsonl/json/parquet file")
    if source.startswith("hf:"):
        name = source[len("hf:"):]
        return load_hub_table(name, split=split, streaming=True), name
    path = Path(source)
    if not path.is_file() or path.suffix not in RECORD_SUFFIXES:
        raise ValueError(f"source={source!r}: streaming reads 'hf:NAME' or an existing {'/'.join(RECORD_SUFFIXES)} file")
    if split != "train":
        raise ValueError(f"a local file has only a train split, not {split!r}")
    from datasets import load_dataset

    kind = "parquet" if path.suffix == ".parquet" else "json"
    return load_dataset(kind, data_files=str(path), split="train", streaming=True), path.stem


class StreamingSequences(IterableDataset):
    """``{"input_ids": [seq_len], "domain_ids": [seq_len]}`` packed from a stream of documents, with a position
    (``state_dict``/``load_state_dict``) that resumes exactly (see the module docstring).

    ``split``: ``"train"`` keeps the documents the data module's rule trains on and ``"validation"`` the held-out
    ones: document k (1-based, counting the documents with text in this rank's stream) is held out when
    ``k % val_every == 0``; ``val_every=None`` keeps every document. ``domain``: this stream's index in the
    data module's ``domain_names``. ``repeat``: at the end of the stream continue from its beginning, never
    ending the pass (so data-parallel ranks, whose parts of a stream differ in length, never disagree about
    where an epoch ends; the training length is then ``max_steps``)."""

    def __init__(self, documents, tokenizer, seq_len: int, domain: int = 0, text_field: str = "text",
                 split: str = "train", val_every: int | None = None, rank: int = 0, world_size: int = 1,
                 repeat: bool = False):
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len} must be >= 2")
        if split not in ("train", "validation"):
            raise ValueError(f"split={split!r} is not one of ('train', 'validation')")
        if val_every is not None and val_every < 2:
            raise ValueError(f"val_every={val_every} must be >= 2 (every val_every-th document is held out)")
        if documents.column_names is not None and text_field not in documents.column_names:
            raise ValueError(f"the stream has no {text_field!r} field; fields: {documents.column_names}")
        # a new IterableDataset of the text alone: its state starts at the beginning of the stream whatever
        # was read from the object passed in
        documents = documents.select_columns([text_field])
        if world_size > 1:
            from datasets.distributed import split_dataset_by_node

            documents = split_dataset_by_node(documents, rank=rank, world_size=world_size)
        self.documents, self.tokenizer, self.seq_len = documents, tokenizer, seq_len
        self.domain, self.text_field, self.eos = domain, text_field, tokenizer.eos_token_id
        self.split, self.val_every, self.repeat = split, val_every, repeat
        self._start = {"source": documents.state_dict(), "skip": 0, "document": 0}  # the beginning of the stream
        self._resume: dict | None = None
        self._position = copy.deepcopy(self._start)

    def state_dict(self) -> dict:
        """Where the next sequence starts: ``{"source": datasets state before its document, "skip": tokens of
        that document already used, "document": that document's index among the stream's documents}``."""
        return copy.deepcopy(self._position)

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"source", "skip", "document"}:
            raise ValueError(f"not a streaming position: {state!r}")
        self._resume = copy.deepcopy(state)
        self._position = copy.deepcopy(state)

    def _keeps(self, k: int) -> bool:
        if self.val_every is None:
            return self.split == "train"
        return ((k + 1) % self.val_every == 0) == (self.split == "validation")

    def __iter__(self):
        position, self._resume = copy.deepcopy(self._resume or self._start), None
        self.documents.load_state_dict(position["source"])
        skip, before, k = position["skip"], position["source"], position["document"]
        from_start, read_text = position == self._start, False
        buffer = np.zeros(0, np.int64)  # tokens read and not yet emitted
        pending: deque[list] = deque()  # per document in the buffer: [state before it, its index, used, in buffer]
        while True:
            for example in self.documents:
                text = example.get(self.text_field)
                if text is not None and not isinstance(text, str):
                    raise ValueError(f"a streamed record has {type(text).__name__} in its {self.text_field!r} field, "
                                     f"not text")
                if text and text.strip():  # documents without text are not counted (as data.corpus drops them)
                    if self._keeps(k):
                        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [self.eos]
                        if ids[skip:]:
                            pending.append([before, k, skip, len(ids) - skip])
                            buffer = np.concatenate([buffer, np.asarray(ids[skip:], np.int64)])
                            read_text = True
                    k, skip = k + 1, 0
                before = self.documents.state_dict()
                while len(buffer) >= self.seq_len:
                    sequence, buffer = buffer[: self.seq_len], buffer[self.seq_len:]
                    left = self.seq_len
                    while left:  # account the emitted tokens to the documents they came from
                        head = pending[0]
                        take = min(left, head[3])
                        head[2] += take
                        head[3] -= take
                        left -= take
                        if head[3] == 0:
                            pending.popleft()
                    self._position = ({"source": pending[0][0], "skip": pending[0][2], "document": pending[0][1]}
                                      if pending else {"source": before, "skip": 0, "document": k})
                    yield {"input_ids": torch.from_numpy(sequence.copy()),
                           "domain_ids": torch.full((self.seq_len,), self.domain, dtype=torch.int64)}
            if not self.repeat:
                break
            if from_start and not read_text:
                raise ValueError(f"the stream has no {self.split} text to repeat")
            # the next pass continues the packing from the beginning of the stream
            self.documents.load_state_dict(copy.deepcopy(self._start["source"]))
            before, k, from_start, read_text = copy.deepcopy(self._start["source"]), 0, True, False
        self._position = copy.deepcopy(self._start)  # the next pass starts over
