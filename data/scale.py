"""The data module's scale-up paths, kept apart from its in-memory corpus: prepared token shards
(``source=DIR``), streaming (``streaming=True``), pretrained tokenizers (``tokenizer=``) and domain mixtures
(``weights=``). ``HizooDataModule`` calls these functions; each takes the data module and sets the attributes
the in-memory path sets (``tokenizer``, ``domain_names``, ``train_set``, ``val_set``).
"""

from __future__ import annotations

import math

import torch

from .loader import StatefulLoader
from .mixture import DomainMixtureSampler, normalize_weights, sequence_domains
from .pretrained import load_tokenizer
from .shards import is_prepared, load_prepared
from .streaming import StreamingSequences, open_stream

__all__ = ["check_arguments", "load_tokenizer", "mark_consumed", "resumable_train_loader", "setup"]


def check_arguments(source, tokenizer, weights, streaming, val_sequences) -> None:
    """Construction-time checks of the scale-up arguments, naming the field and the value."""
    if tokenizer is not None and (not isinstance(tokenizer, str) or not tokenizer.strip()):
        raise ValueError(f"tokenizer={tokenizer!r}: expected a tokenizer folder or hub name (or None for the trained BPE)")
    if weights is not None:
        if not isinstance(weights, dict) or not weights:
            raise ValueError(f"weights={weights!r}: expected a mapping domain -> proportion, e.g. {{code: 0.7, prose: 0.3}}")
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"weights[{name!r}]={value!r} must be a finite number >= 0")
        if not sum(weights.values()) > 0:
            raise ValueError(f"weights={weights!r}: at least one domain needs a positive proportion")
    if not isinstance(streaming, bool):
        raise ValueError(f"streaming={streaming!r} must be true or false")
    if isinstance(val_sequences, bool) or not isinstance(val_sequences, int) or val_sequences < 1:
        raise ValueError(f"val_sequences={val_sequences!r} must be an integer >= 1")
    if streaming:
        if weights is not None:
            raise ValueError("weights: a streamed corpus is one domain; prepare the corpus to train on a domain mixture")
        if tokenizer is None:
            raise ValueError("streaming=True needs a pretrained tokenizer (tokenizer=FOLDER_OR_NAME): the BPE is "
                             "trained on the whole training split, which a stream does not hold")
        if is_prepared(source):
            raise ValueError(f"source={source!r} is a prepared folder: it is read through np.memmap, set streaming=False")
    if is_prepared(source) and tokenizer is not None:
        raise ValueError(f"tokenizer={tokenizer!r}: the prepared folder {source!r} was tokenized with its own "
                         f"tokenizer (its tokenizer/ folder), which training uses; leave tokenizer unset")


def _rank(dm) -> tuple[int, int]:
    trainer = dm.trainer
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def setup(dm) -> bool:
    """Set up ``dm`` from a prepared folder or a stream; False when its source is neither."""
    if is_prepared(dm.source):
        tokenizer, domain_names, train, val, meta = load_prepared(dm.source, dm.seq_len)
        if meta["split"]["val_every"] != dm.val_every:
            raise ValueError(f"val_every={dm.val_every}: the prepared folder {dm.source!r} holds out every "
                             f"{meta['split']['val_every']}-th document; set val_every={meta['split']['val_every']} "
                             f"(the split is fixed when the corpus is prepared)")
        if len(train) < dm.batch_size:
            raise ValueError(f"the train split of {dm.source!r} has {len(train)} sequences of seq_len={dm.seq_len} "
                             f"tokens, fewer than batch_size={dm.batch_size}: not one training batch")
        dm.tokenizer, dm.domain_names, dm.train_set, dm.val_set = tokenizer, domain_names, train, val
        dm.prepared_metadata = meta
        return True
    if not dm.streaming:
        return False
    from .datamodule import PackedSequences

    tokenizer = load_tokenizer(dm.tokenizer_name)
    rank, world = _rank(dm)
    documents, name = open_stream(dm.source)
    dm.train_set = StreamingSequences(documents, tokenizer, dm.seq_len, domain=0, text_field=dm.text_field,
                                      split="train", val_every=dm.val_every, rank=rank, world_size=world,
                                      repeat=world > 1)
    # validation: the first val_sequences held-out sequences of the whole stream, the same on every rank
    held_out = StreamingSequences(open_stream(dm.source)[0], tokenizer, dm.seq_len, domain=0,
                                  text_field=dm.text_field, split="validation", val_every=dm.val_every)
    rows = [item["input_ids"] for item, _ in zip(held_out, range(dm.val_sequences))]
    if not rows:
        raise ValueError(f"the stream {dm.source!r} has no complete held-out sequence of seq_len={dm.seq_len} "
                         f"(every {dm.val_every}-th document is held out)")
    ids = torch.stack(rows)  # [N, seq_len]
    dm.val_set = PackedSequences(ids, torch.zeros_like(ids))
    dm.tokenizer, dm.domain_names = tokenizer, [name]
    return True


def resumable_train_loader(dm) -> StatefulLoader:
    """The training loader of a stream or a domain mixture: its position is saved in checkpoints."""
    if dm.streaming:
        return StatefulLoader(dm.train_set, batch_size=dm.batch_size, num_workers=dm.num_workers,
                               explicit_consumption=dm.trainer is not None)
    if not hasattr(dm, "_sequence_domains"):  # one pass over the domain ids; cached for later epochs
        dm._sequence_domains = sequence_domains(dm.train_set, len(dm.domain_names))
    rank, world = _rank(dm)
    sampler = DomainMixtureSampler(dm._sequence_domains, normalize_weights(dm.weights, dm.domain_names),
                                   seed=dm.seed, num_replicas=world, rank=rank)
    return StatefulLoader(dm.train_set, batch_size=dm.batch_size, sampler=sampler, drop_last=True,
                           num_workers=dm.num_workers, explicit_consumption=dm.trainer is not None)


def mark_consumed(dm) -> None:
    """Called for every batch a loop receives: advances the resumable training loader on training batches."""
    trainer = dm.trainer
    if trainer is None or not trainer.training:
        return
    loader = trainer.train_dataloader
    if isinstance(loader, StatefulLoader) and loader.explicit_consumption:
        loader.mark_consumed()
