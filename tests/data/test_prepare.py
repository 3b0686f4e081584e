"""python -m hizoo.data.prepare and the memmap dataset: shard contents against an independent tokenization,
the data module's split rule and packing, --num-proc independence, resume after an interruption, pretrained
tokenizers, and clear errors."""

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hizoo.data import HizooDataModule, file_documents
from hizoo.data import prepare as prepare_module
from hizoo.data.prepare import main, prepare
from hizoo.data.shards import MemmapSequences, SplitTokens, load_prepared, read_metadata, token_dtype
from hizoo.data.sources import iter_documents

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def build_tokenizer(folder: Path, vocab_size: int = 200) -> Path:
    """A small byte-level BPE with its own special tokens, saved the way any HF tokenizer is."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>").save_pretrained(folder)
    return folder


def build_corpus(folder: Path, seed: int = 0) -> list[str]:
    """Three files, three domains: 12 text paragraphs, a markdown file, 40 jsonl records."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    text = lambda n: " ".join(rng.choices(WORDS, k=n))  # noqa: E731
    (folder / "prose.txt").write_text(text(400))
    (folder / "notes.md").write_text("# " + text(150))
    (folder / "records.jsonl").write_text("\n".join(json.dumps({"text": text(rng.randint(3, 60))}) for _ in range(40)))
    return [str(folder / name) for name in ("prose.txt", "notes.md", "records.jsonl")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return build_corpus(root / "text"), str(build_tokenizer(root / "tokenizer"))


def _offline(monkeypatch):
    """No hub: datasets and huggingface_hub read their offline switches at import, so set them directly
    (setting the environment variables now would leave them trying the network until it times out)."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shards_hold_each_split_in_corpus_order_with_domains(corpus, tmp_path):
    files, tok_dir = corpus
    meta = prepare(files, tok_dir, tmp_path / "out", val_every=3, shard_mb=0.0005, progress=False)
    # independent reference: every document tokenized on its own, split by the rule, joined with eos
    tok = AutoTokenizer.from_pretrained(tok_dir)
    docs = file_documents(files)
    domain_names = sorted({d.domain for d in docs})
    expect = {"train": ([], []), "validation": ([], [])}
    for k, doc in enumerate(docs, start=1):
        ids = tok(doc.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        split = "validation" if k % 3 == 0 else "train"
        expect[split][0].extend(ids)
        expect[split][1].extend([domain_names.index(doc.domain)] * len(ids))
    assert meta["domains"] == domain_names == ["notes", "prose", "records"]
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["eos_token_id"] == tok.eos_token_id
    assert len(meta["shards"]) >= 3  # the tiny shard size cuts the corpus at several document boundaries
    for split, (ids, domains) in expect.items():
        entries = [s["splits"][split] for s in meta["shards"]]
        tokens = np.concatenate([np.fromfile(tmp_path / "out" / e["tokens"], np.uint16) for e in entries])
        doms = np.concatenate([np.fromfile(tmp_path / "out" / e["domains"], np.uint16) for e in entries])
        assert tokens.tolist() == ids and doms.tolist() == domains
        assert meta["splits"][split]["tokens"] == len(ids)
        for d, name in enumerate(domain_names):
            assert meta["splits"][split]["tokens_per_domain"][name] == domains.count(d)
    assert meta["splits"]["validation"]["documents"] == len(docs) // 3
    assert meta["splits"]["train"]["documents"] + meta["splits"]["validation"]["documents"] == len(docs)
    assert read_metadata(tmp_path / "out") == meta
    saved = AutoTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    assert saved("beta gamma")["input_ids"] == tok("beta gamma")["input_ids"]


def test_prepared_folder_trains_on_the_in_memory_modules_sequences(corpus, tmp_path):
    """Same corpus, same tokenizer: the memmap items are the in-memory packing's, split and domains included,
    with a pretrained tokenizer and with the embedded BPE (trained on the same training documents)."""
    files, tok_dir = corpus
    for tokenizer, kw in ((tok_dir, {"tokenizer": tok_dir}), ("bpe:300", {"vocab_size": 300})):
        out = tmp_path / tokenizer.replace(":", "").replace("/", "_")
        prepare(files, tokenizer, out, val_every=4, shard_mb=0.001, cache_dir=str(tmp_path / "cache"), progress=False)
        memory = HizooDataModule(source=files, seq_len=16, val_every=4, cache_dir=str(tmp_path / "cache"), **kw)
        mapped = HizooDataModule(source=str(out), seq_len=16, val_every=4)
        memory.setup(), mapped.setup()
        assert isinstance(mapped.train_set, MemmapSequences)
        assert mapped.domain_names == memory.domain_names
        assert len(mapped.tokenizer) == len(memory.tokenizer)
        for split in ("train_set", "val_set"):
            a, b = getattr(memory, split), getattr(mapped, split)
            assert len(a) == len(b) > 2
            for i in range(len(a)):
                assert torch.equal(a[i]["input_ids"], b[i]["input_ids"]) and a[i]["input_ids"].dtype == torch.int64
                assert torch.equal(a[i]["domain_ids"], b[i]["domain_ids"])


@pytest.mark.slow  # prepares with worker processes
def test_output_is_byte_identical_for_any_num_proc(corpus, tmp_path):
    # two worker processes per shard: several seconds of process start-up, the point of the test
    files, tok_dir = corpus
    prepare(files, tok_dir, tmp_path / "one", num_proc=1, val_every=3, shard_mb=0.002, progress=False)
    prepare(files, tok_dir, tmp_path / "two", num_proc=2, val_every=3, shard_mb=0.002, progress=False)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len([n for n in one if n.endswith(".tokens.bin")]) >= 2
    assert one == two


def test_interrupted_prepare_keeps_finished_shards(corpus, tmp_path, monkeypatch):
    files, tok_dir = corpus
    args = dict(val_every=3, shard_mb=0.0005, progress=False)
    reference = prepare(files, tok_dir, tmp_path / "reference", **args)
    original, written = prepare_module.write_shard, []

    def crash_after_two(docs, shard, *rest):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(shard["index"])
        return original(docs, shard, *rest)

    monkeypatch.setattr(prepare_module, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(files, tok_dir, tmp_path / "out", **args)
    assert not (tmp_path / "out" / "metadata.json").exists()  # an unfinished folder is not a prepared folder
    with pytest.raises(FileNotFoundError, match="not a prepared corpus folder"):
        read_metadata(tmp_path / "out")

    redone = []
    monkeypatch.setattr(prepare_module, "write_shard", lambda docs, shard, *rest: (redone.append(shard["index"]),
                                                                                 original(docs, shard, *rest))[1])
    meta = prepare(files, tok_dir, tmp_path / "out", **args)
    assert written == [0, 1] and redone == list(range(2, len(reference["shards"])))
    assert _files(tmp_path / "out") == _files(tmp_path / "reference") and meta == reference

    # a damaged shard of a finished folder is found by its hash and redone alone
    victim = tmp_path / "out" / reference["shards"][1]["splits"]["train"]["tokens"]
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    redone.clear()
    prepare(files, tok_dir, tmp_path / "out", **args)
    assert redone == [1] and _files(tmp_path / "out") == _files(tmp_path / "reference")


def test_vocabularies_beyond_uint16_use_uint32(tmp_path):
    assert token_dtype(256) == token_dtype(65536) == "uint16" and token_dtype(65537) == "uint32"
    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["</s>"] = 70_000
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>").save_pretrained(tmp_path / "tok")
    (tmp_path / "big.txt").write_text("w1 w65535 w65536 w69999 " * 5)
    (tmp_path / "small.txt").write_text("w2 w3")
    meta = prepare([str(tmp_path / "big.txt"), str(tmp_path / "small.txt")], str(tmp_path / "tok"), tmp_path / "out",
                   val_every=2, progress=False)
    assert meta["dtype"] == "uint32"
    ids = np.fromfile(tmp_path / "out" / meta["shards"][0]["splits"]["train"]["tokens"], np.uint32)
    assert ids.tolist() == [1, 65535, 65536, 69999] * 5 + [70_000]


def test_memmap_dataset_pickles_small_and_works_in_worker_processes(corpus, tmp_path):
    files, tok_dir = corpus
    prepare(files, tok_dir, tmp_path / "out", val_every=3, shard_mb=0.0005, progress=False)
    meta = read_metadata(tmp_path / "out")
    data = MemmapSequences(SplitTokens(tmp_path / "out", meta, "train"), seq_len=8)
    first = data[0]
    assert len(pickle.dumps(data)) < 4000  # the maps are reopened in each process, never copied
    direct = torch.stack([data[i]["input_ids"] for i in range(len(data))])
    # two worker processes: a few seconds of start-up
    loaded = torch.cat([b["input_ids"] for b in DataLoader(data, batch_size=5, num_workers=2)])
    assert torch.equal(direct, loaded) and torch.equal(first["input_ids"], direct[0])
    with pytest.raises(IndexError, match="outside"):
        data[len(data)]


def test_pretrained_tokenizer_option_sets_the_vocabulary(corpus, tmp_path):
    files, tok_dir = corpus
    dm = HizooDataModule(source=files, tokenizer=tok_dir, seq_len=16, val_every=4, cache_dir=str(tmp_path))
    dm.setup()
    reference = AutoTokenizer.from_pretrained(tok_dir)
    assert len(dm.tokenizer) == len(reference) and dm.tokenizer.eos_token == "</s>"
    assert int(dm.train_set[0]["input_ids"].max()) < len(reference)
    assert not list(tmp_path.glob("bpe-*"))  # no BPE was trained
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path / "no_eos")
    with pytest.raises(ValueError, match="no eos_token"):
        HizooDataModule(source=files, tokenizer=str(tmp_path / "no_eos")).setup()
    with pytest.raises(ValueError, match="could not be loaded"):
        HizooDataModule(source=files, tokenizer=str(tmp_path / "missing-folder")).setup()


def test_sources_follow_the_corpus_rules(corpus, tmp_path):
    files, _ = corpus
    assert list(iter_documents(files)) == file_documents(files)  # the in-memory module reads the same documents
    tree = tmp_path / "tree"
    (tree / "code" / "pkg").mkdir(parents=True)
    (tree / "code" / "pkg" / "a.py").write_text("x = 1")
    (tree / "code" / "b.py").write_text("y = 2")
    (tree / "wiki.jsonl").write_text('{"text": "one"}\n{"text": "  "}\n{"text": "two"}')
    (tree / "empty.txt").write_text("  \n")
    (tree / ".hidden").mkdir()
    (tree / ".hidden" / "c.txt").write_text("not corpus")
    docs = [(d.domain, d.text) for d in iter_documents([str(tree), f"mine={files[0]}"])]
    assert docs[:4] == [("code", "y = 2"), ("code", "x = 1"), ("wiki", "one"), ("wiki", "two")]
    assert docs[4][0] == "mine" and len(docs) == 5


def test_bad_inputs_raise_clear_errors(corpus, tmp_path, monkeypatch):
    files, tok_dir = corpus
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a prepared corpus folder"):
        prepare(files, tok_dir, tmp_path / "busy", progress=False)
    assert (tmp_path / "busy" / "precious.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare([str(tmp_path / "nope.txt")], tok_dir, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="val_every=1"):
        prepare(files, tok_dir, tmp_path / "b", val_every=1, progress=False)
    with pytest.raises(ValueError, match="could not be loaded"):
        prepare(files, str(tmp_path / "no-tokenizer"), tmp_path / "c", progress=False)
    _offline(monkeypatch)
    with pytest.raises(ConnectionError, match="'hizoo-test/no-such-corpus'.*pass local files"):
        prepare(["hf:hizoo-test/no-such-corpus"], tok_dir, tmp_path / "d", progress=False)
    assert main(["hf:hizoo-test/no-such-corpus", "--tokenizer", tok_dir, "--out", str(tmp_path / "e"), "--quiet"]) == 2


def test_damaged_prepared_folder_is_refused(corpus, tmp_path):
    files, tok_dir = corpus
    out = tmp_path / "out"
    meta = prepare(files, tok_dir, out, val_every=3, progress=False)
    with pytest.raises(ValueError, match="val_every=20.*every 3-th"):
        HizooDataModule(source=str(out), seq_len=8).setup()
    with pytest.raises(ValueError, match="leave tokenizer unset"):
        HizooDataModule(source=str(out), tokenizer=tok_dir, val_every=3)
    shard = out / meta["shards"][0]["splits"]["train"]["tokens"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match=f"{shard.name} has .* bytes, expected"):
        load_prepared(out, 8)
    (out / "metadata.json").write_text('{"format": ')
    with pytest.raises(ValueError, match="metadata.json is corrupt"):
        load_prepared(out, 8)
