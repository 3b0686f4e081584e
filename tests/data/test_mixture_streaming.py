"""Domain mixtures (proportions, DDP sharding, exact resume) and streaming corpora (packing equal to the
in-memory module's, exact resume of the position), through the resumable loader."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hizoo.data import HizooDataModule
from hizoo.data.loader import StatefulLoader
from hizoo.data.mixture import DomainMixtureSampler, majority_domains, normalize_weights
from hizoo.data.streaming import StreamingSequences, open_stream

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer=trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """A jsonl file of 60 documents of 1-80 words (some far longer than a sequence), two of them empty."""
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("stream") / "books.jsonl"
    rows = [" ".join(rng.choices(WORDS, k=rng.randint(1, 80))) for _ in range(60)]
    rows[7] = rows[30] = "   "
    path.write_text("\n".join(json.dumps({"text": t}) for t in rows))
    return str(path)


def test_majority_domain_rule_and_weights():
    rows = np.array([[0, 0, 1], [2, 1, 1], [1, 0, 1], [3, 2, 3], [1, 0, 2]])
    assert majority_domains(rows, 4).tolist() == [0, 1, 1, 3, 0]  # last row: a three-way tie goes to domain 0
    assert normalize_weights({"b": 3, "a": 1}, ["a", "b", "c"]).tolist() == [0.25, 0.75, 0.0]
    with pytest.raises(ValueError, match="domain 'd' is not in the corpus"):
        normalize_weights({"d": 1.0}, ["a", "b"])
    with pytest.raises(ValueError, match=r"weights\['a'\]=-1"):
        normalize_weights({"a": -1}, ["a", "b"])
    with pytest.raises(ValueError, match="at least one domain needs a positive"):
        HizooDataModule(weights={"a": 0.0})
    with pytest.raises(ValueError, match="positive weight but no training sequence"):
        DomainMixtureSampler(np.zeros(10, np.int64), np.array([0.5, 0.5]))


def test_mixture_draws_domains_in_proportion():
    labels = np.array([0] * 800 + [1] * 150 + [2] * 50)  # a natural mix of 80/15/5 %
    probs = np.array([0.2, 0.3, 0.5])
    sampler = DomainMixtureSampler(labels, probs, seed=3, num_samples=20_000)
    order = np.fromiter(iter(sampler), np.int64)
    share = np.bincount(labels[order], minlength=3) / len(order)
    sd = np.sqrt(probs * (1 - probs) / len(order))
    assert np.all(np.abs(share - probs) < 4 * sd), share
    # within a domain every sequence is used once before any is used again: counts differ by at most one
    for d in range(3):
        counts = np.bincount(order[labels[order] == d], minlength=len(labels))[labels == d]
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(order, np.fromiter(iter(DomainMixtureSampler(labels, probs, seed=3, num_samples=20_000)), np.int64))
    other = DomainMixtureSampler(labels, probs, seed=4, num_samples=20_000)
    assert not np.array_equal(order, np.fromiter(iter(other), np.int64))
    sampler.set_epoch(1)
    assert not np.array_equal(order, np.fromiter(iter(sampler), np.int64))


def test_mixture_ranks_split_one_global_order():
    labels = np.arange(103) % 3
    probs = np.array([0.5, 0.25, 0.25])
    whole = DomainMixtureSampler(labels, probs, seed=0, num_replicas=2, rank=0).epoch_order(0)
    ranks = [np.fromiter(iter(DomainMixtureSampler(labels, probs, seed=0, num_replicas=2, rank=r)), np.int64)
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 51
    assert np.array_equal(np.stack(ranks, 1).reshape(-1), whole)


def _run(loader, batches, consume_each=True):
    out = []
    for batch, _ in zip(loader, range(batches)):
        out.append(batch["input_ids"])
        if loader.explicit_consumption and consume_each:
            loader.mark_consumed()
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mixture_loader_resumes_exactly(tmp_path, tok_dir, records, num_workers):
    # num_workers=2: worker processes fetch ahead of what the step consumed; a few seconds of start-up
    dm = HizooDataModule(source=[records], tokenizer=tok_dir, seq_len=8, batch_size=3, val_every=5,
                         weights={"books": 1.0}, num_workers=num_workers)
    dm.setup()

    def loader():
        made = dm.train_dataloader()
        made.explicit_consumption = True  # as under Lightning: consumption is marked per training step
        return made

    straight = loader()
    epoch0 = _run(straight, len(straight) + 5)  # runs into the next epoch (a fresh pass)
    straight.sampler.set_epoch(1)
    reference = epoch0[: len(straight)] + _run(straight, 5)
    first = loader()
    seen = _run(first, 4)
    state = first.state_dict()
    assert state == {"epoch": 0, "batches": 4}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = _run(resumed, len(resumed) - 4)
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, reference[: len(resumed)]))
    assert resumed.state_dict() == {"epoch": 1, "batches": 0}  # a finished pass resumes at the next epoch


def test_stream_packs_like_the_in_memory_module(tok_dir, records):
    memory = HizooDataModule(source=[records], tokenizer=tok_dir, seq_len=16, val_every=4)
    memory.setup()
    documents, domain = open_stream(records)
    assert domain == "books"
    for split, reference in (("train", memory.train_set), ("validation", memory.val_set)):
        stream = StreamingSequences(documents, memory.tokenizer, 16, split=split, val_every=4)
        items = list(stream)
        assert len(items) == len(reference)
        assert all(torch.equal(item["input_ids"], reference[i]["input_ids"]) for i, item in enumerate(items))


def test_stream_position_resumes_exactly_at_every_sequence(tok_dir, records):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    stream = StreamingSequences(open_stream(records)[0], tokenizer, 16, val_every=4)
    items, states = [], []
    for item in stream:
        items.append(item["input_ids"])
        states.append(stream.state_dict())
    assert len(items) > 20 and any(s["skip"] > 0 for s in states)  # some positions are inside a document
    for k in (0, 1, 5, len(items) // 2, len(items) - 2):
        fresh = StreamingSequences(open_stream(records)[0], tokenizer, 16, val_every=4)  # a new process
        fresh.load_state_dict(states[k])
        rest = [item["input_ids"] for item in fresh]
        assert len(rest) == len(items) - k - 1
        assert all(torch.equal(a, b) for a, b in zip(rest, items[k + 1:]))
    again = [item["input_ids"] for item in stream]  # a finished stream starts over
    assert all(torch.equal(a, b) for a, b in zip(again, items))


def test_streaming_loader_counts_consumed_batches_not_prefetched_ones(tok_dir, records):
    dm = HizooDataModule(source=records, tokenizer=tok_dir, streaming=True, seq_len=16, batch_size=2, val_every=4,
                         val_sequences=3)
    dm.setup()
    assert dm.domain_names == ["books"] and len(dm.val_set) == 3
    straight = [b["input_ids"] for b in dm.train_dataloader()]
    loader = StatefulLoader(dm.train_set, batch_size=2, explicit_consumption=True)
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
        loader.mark_consumed()
    next(iterator)  # fetched ahead (as Lightning does for loaders without a length), not trained on
    state = loader.state_dict()
    assert state["batches"] == 3
    dm2 = HizooDataModule(source=records, tokenizer=tok_dir, streaming=True, seq_len=16, batch_size=2, val_every=4,
                          val_sequences=3)
    dm2.setup()
    resumed = StatefulLoader(dm2.train_set, batch_size=2)
    resumed.load_state_dict(state)
    rest = [b["input_ids"] for b in resumed]
    assert len(rest) == len(straight) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, straight[3:]))
    with pytest.raises(ValueError, match="num_workers=2"):
        StatefulLoader(dm.train_set, batch_size=2, num_workers=2)
    with pytest.raises(ValueError, match="needs a pretrained tokenizer"):
        HizooDataModule(source=records, streaming=True)


def test_repeating_stream_packs_across_passes_and_resumes(tok_dir, records):
    """As each DDP rank reads its stream: endlessly, the next pass's start packed after the last pass's tail."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    texts = [json.loads(line)["text"] for line in Path(records).read_text().splitlines()]
    kept = [t for k, t in enumerate(t for t in texts if t.strip()) if (k + 1) % 4]
    one_pass = [i for t in kept for i in tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    stream = StreamingSequences(open_stream(records)[0], tokenizer, 16, val_every=4, repeat=True)
    n = 2 * len(one_pass) // 16 + 3  # into the third pass
    items, states = [], []
    for item, _ in zip(stream, range(n)):
        items.append(item["input_ids"])
        states.append(stream.state_dict())
    assert torch.equal(torch.cat(items), torch.tensor((one_pass * 3)[: n * 16]))
    k = len(one_pass) // 16 + 2  # a position in the second pass
    fresh = StreamingSequences(open_stream(records)[0], tokenizer, 16, val_every=4, repeat=True)
    fresh.load_state_dict(states[k])
    rest = [item["input_ids"] for item, _ in zip(fresh, range(n - k - 1))]
    assert all(torch.equal(a, b) for a, b in zip(rest, items[k + 1:])) and len(rest) == n - k - 1
