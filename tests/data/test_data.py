"""Corpus, tokenizer cache and data module: domains, determinism, and clear errors for bad input."""

import pytest
import torch
from transformers import AutoTokenizer

from hizoo.data import HizooDataModule, file_documents, stdlib_documents, train_or_load_tokenizer


def test_stdlib_corpus_has_domains_and_no_test_suite():
    docs = stdlib_documents(max_files=60)
    assert len(docs) > 40
    domains = {d.domain for d in docs}
    assert "toplevel" in domains and len(domains) >= 5
    assert "test" not in domains


def test_tokenizer_is_cached_and_loads_with_auto_tokenizer(tmp_path):
    texts = [d.text for d in stdlib_documents(max_files=10)]
    first = train_or_load_tokenizer(texts, 300, tmp_path)
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and (cached[0] / "tokenizer.json").is_file()
    second = train_or_load_tokenizer(texts, 300, tmp_path)
    assert list(tmp_path.iterdir()) == cached  # no retraining
    auto = AutoTokenizer.from_pretrained(cached[0])
    sample = "def f(x):\n    return x + 1\n"
    assert first(sample)["input_ids"] == second(sample)["input_ids"] == auto(sample)["input_ids"]
    assert auto.decode(auto(sample)["input_ids"]) == sample
    train_or_load_tokenizer(texts, 320, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # another vocab size is another cache entry


def _datamodule(tmp_path, **kw):
    args = dict(max_files=20, vocab_size=300, seq_len=32, batch_size=4, cache_dir=str(tmp_path))
    args.update(kw)
    dm = HizooDataModule(**args)
    dm.setup()
    return dm


@pytest.mark.slow  # trains a tokenizer and builds two data modules
def test_packing_and_deterministic_order(tmp_path):
    a, b = _datamodule(tmp_path), _datamodule(tmp_path)
    assert a.train_set.input_ids.shape[1] == 32
    assert torch.equal(a.train_set.input_ids, b.train_set.input_ids)
    assert a.train_set.domain_ids.max() < len(a.domain_names)
    first = [batch["input_ids"] for batch, _ in zip(a.train_dataloader(), range(3))]
    again = [batch["input_ids"] for batch, _ in zip(b.train_dataloader(), range(3))]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    other_seed = _datamodule(tmp_path, seed=1)
    shuffled = next(iter(other_seed.train_dataloader()))["input_ids"]
    assert not torch.equal(shuffled, first[0])


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        file_documents([str(tmp_path / "missing.txt")])
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ValueError, match="corpus contains no text"):
        file_documents([str(tmp_path / "empty.txt")])
    (tmp_path / "rows.jsonl").write_text('{"body": "hello"}\n')
    with pytest.raises(ValueError, match="no 'text' field"):
        file_documents([str(tmp_path / "rows.jsonl")])
    with pytest.raises(ValueError, match="fewer than seq_len=100000"):
        _datamodule(tmp_path, seq_len=100000)


def test_local_files_become_domains(tmp_path):
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.txt").write_text(f"{name} " * 2000)
    (tmp_path / "gamma.jsonl").write_text("\n".join('{"text": "gamma gamma gamma"}' for _ in range(400)))
    dm = _datamodule(tmp_path, source=[str(tmp_path / n) for n in ("alpha.txt", "beta.txt", "gamma.jsonl")],
                     val_every=2, max_files=None)
    assert dm.domain_names == ["alpha", "beta", "gamma"]


@pytest.mark.slow  # datasets' offline lookup of a hub name
def test_hub_name_without_network_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(ConnectionError, match="'hizoo-test/no-such-corpus'.*pass local files"):
        HizooDataModule(source="hf:hizoo-test/no-such-corpus", cache_dir=str(tmp_path)).setup()
