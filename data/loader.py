"""A DataLoader whose position is saved in checkpoints, for the domain-mixture sampler and streaming corpora.

Lightning stores the ``state_dict()`` of every training loader that has ``state_dict``/``load_state_dict``
with the fit loop's state, and hands it back through ``load_state_dict`` before iterating again on resume.
The state is the position after the last batch the training loop **consumed**: Lightning fetches one batch
ahead of the step for loaders without a length (iterables), and worker processes fetch several, so the
loader counts consumption, not fetches. With ``explicit_consumption`` the owner calls ``mark_consumed()`` once
per batch a training step received (``HizooDataModule.on_before_batch_transfer`` does); without it every
batch handed out counts as consumed (plain loops, maps with a length).

Two kinds of position:
- a map-style dataset with a sampler that has ``start`` and ``set_epoch`` (``DomainMixtureSampler``):
  ``{"epoch", "batches"}``; on resume the sampler redraws that epoch and skips the ``batches * batch_size *
  num_replicas`` positions all ranks trained on;
- an iterable dataset with ``state_dict``/``load_state_dict`` (``StreamingSequences``, ``num_workers=0``):
  ``{"epoch", "batches", "dataset"}`` with the dataset's own position after the last consumed batch.
"""

from __future__ import annotations

import copy
from collections import deque

from torch.utils.data import DataLoader, IterableDataset


class StatefulLoader(DataLoader):
    def __init__(self, *args, explicit_consumption: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.explicit_consumption = explicit_consumption
        self._streaming = isinstance(self.dataset, IterableDataset)
        if self._streaming:
            if not (hasattr(self.dataset, "state_dict") and hasattr(self.dataset, "load_state_dict")):
                raise TypeError(f"{type(self.dataset).__name__} has no state_dict/load_state_dict: its position "
                                f"cannot be saved")
            if self.num_workers:
                raise ValueError(f"num_workers={self.num_workers}: a streaming corpus is read in the main process "
                                 f"(its position is saved from there); use num_workers=0")
        elif not (hasattr(self.sampler, "start") and hasattr(self.sampler, "set_epoch")):
            raise TypeError(f"{type(self.sampler).__name__} cannot start mid-epoch (needs start and set_epoch)")
        self._epoch = 0  # epoch of the current (or last) pass
        self._consumed = 0  # batches of that pass the training loop received
        self._dataset_state = None  # streaming: the dataset's position after the last consumed batch
        self._pending: deque = deque()  # positions after batches handed out but not yet consumed
        self._exhausted = False  # the pass has handed out its last batch
        self._resume: dict | None = None

    def state_dict(self) -> dict:
        if self._exhausted and not self._pending:  # the pass is complete: the next one is due
            state = {"epoch": self._epoch + 1, "batches": 0}
            return {**state, "dataset": None} if self._streaming else state
        state = {"epoch": self._epoch, "batches": self._consumed}
        return {**state, "dataset": copy.deepcopy(self._dataset_state)} if self._streaming else state

    def load_state_dict(self, state: dict) -> None:
        keys = {"epoch", "batches"} | ({"dataset"} if self._streaming else set())
        if not isinstance(state, dict) or set(state) != keys:
            raise ValueError(f"the checkpoint's data loader state {state!r} is not a {type(self).__name__} "
                             f"state with keys {sorted(keys)} (was the run started with another data source?)")
        self._resume = copy.deepcopy(state)

    def mark_consumed(self) -> None:
        """A training step received the oldest batch handed out and not yet marked."""
        if self._pending:
            self._dataset_state = self._pending.popleft()
            self._consumed += 1

    def __iter__(self):
        resume, self._resume = self._resume, None
        if resume:
            self._epoch, self._consumed = resume["epoch"], resume["batches"]
        else:
            self._epoch, self._consumed = self._epoch + self._exhausted, 0
        self._pending.clear()
        self._exhausted = False
        if self._streaming:
            self._dataset_state = resume["dataset"] if resume else None
            if self._dataset_state is not None:
                self.dataset.load_state_dict(self._dataset_state)
        else:
            if resume:
                self.sampler.set_epoch(self._epoch)
            self.sampler.start = self._consumed * self.batch_size * getattr(self.sampler, "num_replicas", 1)
        return self._counting(super().__iter__())

    def _counting(self, batches):
        for batch in batches:
            if not self._streaming:
                self._epoch = getattr(self.sampler, "drawn_epoch", self.sampler.epoch)  # the epoch it drew
            position = self.dataset.state_dict() if self._streaming else None
            if self.explicit_consumption:
                self._pending.append(position)
            else:
                self._dataset_state = position
                self._consumed += 1
            yield batch
        self._exhausted = True
