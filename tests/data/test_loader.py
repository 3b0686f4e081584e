"""The training order: per-rank shards of one permutation per epoch, and a loader whose position Lightning saves,
so an interrupted epoch continues with the next unseen batch (any number of ranks, any num_workers)."""

from types import SimpleNamespace

import pytest
import torch

from hizoo.data import HizooDataModule
from hizoo.data.datamodule import EpochShards, PackedSequences, ResumableLoader


def _dataset(n: int) -> PackedSequences:
    ids = torch.arange(n).view(n, 1).repeat(1, 4)  # row i is [i, i, i, i]: a batch shows which rows it holds
    return PackedSequences(ids, torch.zeros_like(ids))


def _rows(batches) -> list[list[int]]:
    return [batch["input_ids"][:, 0].tolist() for batch in batches]


def _loader(data, world_size=1, rank=0, batch_size=4, seed=3, num_workers=0, epoch=0) -> ResumableLoader:
    sampler = EpochShards(data, num_replicas=world_size, rank=rank, seed=seed)
    sampler.set_epoch(epoch)
    return ResumableLoader(data, batch_size, sampler, num_workers=num_workers)


def test_ranks_get_disjoint_shards_of_one_permutation_and_global_batches_are_its_slices():
    data = _dataset(103)
    B, W = 4, 2
    single = [r for batch in _rows(_loader(data, batch_size=B * W)) for r in batch]  # one process, batch B·W
    shards = [_rows(_loader(data, world_size=W, rank=r, batch_size=B)) for r in range(W)]
    assert len(shards[0]) == len(shards[1]) == 103 // W // B  # 51 samples per rank: 12 batches of 4
    for t in range(len(shards[0])):
        global_batch = sorted(shards[0][t] + shards[1][t])
        assert global_batch == sorted(single[t * B * W:(t + 1) * B * W])  # the same global batch as 1 process
    seen = [r for shard in shards for batch in shard for r in batch]
    assert len(seen) == len(set(seen))  # no sample twice in an epoch
    again = _rows(_loader(data, world_size=W, rank=1, batch_size=B))
    assert again == shards[1]  # drawn from (seed, epoch) alone
    assert _rows(_loader(data, world_size=W, rank=1, batch_size=B, epoch=1)) != shards[1]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2])
def test_resumed_loader_continues_with_the_next_unseen_batch(num_workers, world_size):
    data = _dataset(80)
    for rank in range(world_size):
        full = _rows(_loader(data, world_size, rank, num_workers=num_workers, epoch=1))
        first = _loader(data, world_size, rank, num_workers=num_workers, epoch=1)
        consumed = []
        for batch in first:
            consumed.append(batch["input_ids"][:, 0].tolist())
            if len(consumed) == 3:
                break
        state = first.state_dict()
        assert state["epoch"] == 1 and state["batches_done"] == 3  # counted as handed out, not as prefetched
        resumed = _loader(data, world_size, rank, num_workers=num_workers, epoch=1)
        resumed.load_state_dict(state)
        assert len(resumed) == len(full)  # len is the whole epoch: Lightning's restored counter covers the rest
        rest = _rows(resumed)
        assert consumed + rest == full
        assert _rows(resumed) == full  # the next epoch pass starts at its beginning again


def test_saved_position_of_another_epoch_is_not_applied():
    data = _dataset(40)
    loader = _loader(data, epoch=0)
    loader.load_state_dict({**loader.state_dict(), "epoch": 0, "batches_done": 10})  # epoch 0 was finished
    loader.sampler.set_epoch(1)  # Lightning moves on to epoch 1
    assert _rows(loader) == _rows(_loader(data, epoch=1))


@pytest.mark.parametrize("field, change", [("world_size", dict(world_size=2)), ("batch_size", dict(batch_size=2)),
                                           ("seed", dict(seed=4))])
def test_loader_refuses_a_position_saved_under_other_settings(field, change):
    data = _dataset(40)
    state = _loader(data).state_dict()
    with pytest.raises(ValueError, match=f"{field}: .* in the checkpoint, .* now"):
        _loader(data, **change).load_state_dict(state)


def _datamodule(tmp_path, **kw):
    args = dict(max_files=20, vocab_size=300, seq_len=32, batch_size=4, cache_dir=str(tmp_path))
    args.update(kw)
    dm = HizooDataModule(**args)
    dm.setup()
    return dm


def test_datamodule_state_refuses_other_data_settings_and_tiny_data(tmp_path):
    dm = _datamodule(tmp_path)
    state = dm.state_dict()
    HizooDataModule(**{**dict(max_files=20, vocab_size=300, seq_len=32, batch_size=4)}).load_state_dict(state)
    with pytest.raises(ValueError, match="data.seed: 0 in the checkpoint, 1 now"):
        HizooDataModule(max_files=20, vocab_size=300, seq_len=32, batch_size=4, seed=1).load_state_dict(state)
    # enough sequences for one batch in total, not for one batch on each of 2 data-parallel ranks
    per_rank_short = _datamodule(tmp_path, batch_size=len(dm.train_set) // 2 + 1)
    per_rank_short.trainer = SimpleNamespace(world_size=2, global_rank=0)
    with pytest.raises(ValueError, match="over 2 process\\(es\\): fewer than one batch of batch_size=.*no training step"):
        per_rank_short.train_dataloader()
