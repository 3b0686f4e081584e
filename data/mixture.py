"""Domain mixtures (``--data.weights``): training sequences drawn by domain with given proportions.

Each sequence has one domain: the **majority domain of its tokens**, ties going to the domain that comes
first in ``domain_names`` (sorted order). A sequence packs the end of one document and the start of the next,
so its tokens can come from two domains; the majority is the domain most of its training signal is from.

Draws (the same on every rank): for epoch ``e`` a generator seeded by ``(seed, e)`` draws the domain of every
position of the epoch from the normalized weights, then visits each domain's sequences in a fresh random
permutation, reshuffled each time the domain is exhausted (so an up-weighted small domain repeats, and no
sequence repeats before its domain is used up). Rank ``r`` of ``W`` takes positions ``r, r + W, ...``; an epoch
has as many positions as the training split has sequences, cut to a multiple of ``W``. The order is a pure
function of (seed, epoch, weights, labels), so a resumed run continues it exactly from a position.
Domains absent from ``weights`` are not trained on; validation keeps the natural split.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DistributedSampler


def normalize_weights(weights: dict, domain_names: list[str]) -> np.ndarray:
    """``{domain: proportion}`` -> probabilities ``[D]`` in ``domain_names`` order (missing domains 0), with
    errors that name the domain and value."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"weights={weights!r}: expected a non-empty mapping domain -> proportion")
    probs = np.zeros(len(domain_names))
    for name, value in weights.items():
        if name not in domain_names:
            raise ValueError(f"weights: domain {name!r} is not in the corpus; its domains: {domain_names}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"weights[{name!r}]={value!r} must be a finite number >= 0")
        probs[domain_names.index(name)] = float(value)
    if probs.sum() <= 0:
        raise ValueError(f"weights={weights!r}: at least one domain needs a positive proportion")
    return probs / probs.sum()


def majority_domains(domain_ids: np.ndarray, num_domains: int) -> np.ndarray:
    """``[n, L]`` per-token domain ids -> ``[n]`` majority domain of each row (ties: the smallest id)."""
    n = domain_ids.shape[0]
    rows = np.repeat(np.arange(n), domain_ids.shape[1])
    counts = np.bincount(rows * num_domains + domain_ids.reshape(-1), minlength=n * num_domains)
    return counts.reshape(n, num_domains).argmax(1)  # argmax returns the first maximum


def sequence_domains(dataset, num_domains: int, chunk: int = 4096) -> np.ndarray:
    """The domain of every sequence of a dataset of ``{"input_ids", "domain_ids"}`` items, read in chunks so
    a memmapped corpus is never loaded whole."""
    out = np.empty(len(dataset), np.int64)
    for start in range(0, len(dataset), chunk):
        stop = min(start + chunk, len(dataset))
        if hasattr(dataset, "domain_rows"):  # MemmapSequences
            rows = dataset.domain_rows(start, stop)
        elif isinstance(getattr(dataset, "domain_ids", None), torch.Tensor):  # PackedSequences
            rows = dataset.domain_ids[start:stop].numpy()
        else:
            rows = np.stack([np.asarray(dataset[i]["domain_ids"]) for i in range(start, stop)])
        out[start:stop] = majority_domains(rows.astype(np.int64), num_domains)
    return out


class DomainMixtureSampler(DistributedSampler):
    """Indices of sequences drawn by domain with proportions ``probs`` (see the module docstring).

    A ``DistributedSampler`` subclass so Lightning leaves it as it is under DDP (it shards by rank itself).
    ``set_epoch`` selects the epoch's draw; ``start`` (set by the loader on resume) skips the first ``start``
    positions of the epoch's global order, all ranks together, once (a multiple of ``num_replicas``). ``len`` is
    the rank's full epoch, the same before and after a resume.
    """

    def __init__(self, labels: np.ndarray, probs: np.ndarray, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 num_samples: int | None = None):
        # DistributedSampler.__init__ needs an initialized process group; set its fields directly instead
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        labels = np.asarray(labels, dtype=np.int64)
        probs = np.asarray(probs, dtype=np.float64)
        empty = [d for d in np.flatnonzero(probs > 0) if not (labels == d).any()]
        if empty:
            raise ValueError(f"domains {empty} have a positive weight but no training sequence (a sequence's domain "
                             f"is the majority domain of its tokens)")
        self.labels, self.probs, self.seed = labels, probs, int(seed)
        self.num_replicas, self.rank, self.epoch, self.start, self.drawn_epoch = num_replicas, rank, 0, 0, 0
        self.total_size = ((len(labels) if num_samples is None else num_samples) // num_replicas) * num_replicas
        self.num_samples = self.total_size // num_replicas
        self.by_domain = [np.flatnonzero(labels == d) for d in range(len(probs))]  # [D] sequence indices

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All ranks' indices for ``epoch`` (position ``t`` goes to rank ``t % num_replicas``)."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        domains = rng.choice(len(self.probs), size=self.total_size, p=self.probs)  # [total] domain of each position
        order = np.empty(self.total_size, np.int64)
        for d, members in enumerate(self.by_domain):
            slots = np.flatnonzero(domains == d)
            if not slots.size:
                continue
            rounds = -(-slots.size // members.size)  # permutations needed to fill the domain's slots
            order[slots] = np.concatenate([rng.permutation(members) for _ in range(rounds)])[: slots.size]
        return order

    def __iter__(self):
        start, self.start = self.start, 0
        self.drawn_epoch = self.epoch  # what the loader records (workers may draw before Lightning's set_epoch)
        mine = self.epoch_order(self.epoch)[start + self.rank:: self.num_replicas]
        return map(int, mine)  # lazily: no list of Python ints for the whole epoch

    def __len__(self) -> int:
        return self.num_samples
