"""Bad and unusual corpus input: binary files, malformed or mistyped JSON records, folders, empty corpora, bad data
module arguments, a corrupt tokenizer cache, and text without whitespace (tokenizer training stays linear)."""

import json
import random
import time
import warnings

import pytest
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hizoo.data import HizooDataModule, file_documents, stdlib_documents, train_or_load_tokenizer
from hizoo.data import tokenizer as tokenizer_module
from hizoo.data.tokenizer import MAX_PIECE_CHARS, MIN_VOCAB_SIZE, pre_tokenizer, train_tokenizer


# ------------------------------------------------------------------ corpus files
def test_binary_file_is_an_error_naming_it_or_skipped_on_request(tmp_path):
    (tmp_path / "good.txt").write_text("some text " * 50)
    (tmp_path / "image.txt").write_bytes(bytes(range(256)) * 4)  # not UTF-8
    (tmp_path / "zeros.md").write_bytes(b"abc\x00\x00def")  # valid UTF-8 but binary
    for bad in ("image.txt", "zeros.md"):
        with pytest.raises(ValueError, match=rf"{bad} .*(not UTF-8 text|NUL bytes).*skip_bad_files=True"):
            file_documents([tmp_path / "good.txt", tmp_path / bad])
    with pytest.warns(UserWarning, match="skipping a corpus file.*image.txt is not UTF-8"):
        docs = file_documents([tmp_path / "good.txt", tmp_path / "image.txt"], skip_bad_files=True)
    assert [d.domain for d in docs] == ["good"]


@pytest.mark.parametrize("name, content, fragment", [
    ("rows.jsonl", '{"text": "fine"}\n{"text": 42}\n', "rows.jsonl, line 2: field 'text' must be a string (or null), got int"),
    ("rows.jsonl", '{"text": "fine"}\n{"text": ["a"]}\n', "rows.jsonl, line 2: field 'text' must be a string"),
    ("rows.jsonl", '{"text": "fine"}\n\n{"text": "x"\n', "rows.jsonl, line 3: not valid JSON"),
    ("rows.jsonl", '{"text": "fine"}\n["a", "b"]\n', "rows.jsonl, line 2: a record must be a JSON object"),
    ("rows.jsonl", '{"text": "fine"}\n{"body": "x"}\n', "rows.jsonl, line 2 has no 'text' field; its fields: ['body']"),
    ("rows.json", '[{"text": "fine"}, {"text": 1.5}]', "rows.json, record 1: field 'text' must be a string"),
    ("rows.json", '[{"text": "fine"},\n {"text": ]', "rows.json, line 2: not valid JSON"),
    ("rows.jsonl", b'{"text": "caf\xe9"}\n', "rows.jsonl is not UTF-8 text"),
])
def test_bad_records_name_the_file_and_the_line_or_record(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as err:
        file_documents([path])
    assert fragment in str(err.value)


def test_json_forms_and_null_texts(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"text": "a b"}, {"text": None}, {"text": "c d"}]))
    (tmp_path / "one.json").write_text(json.dumps({"text": "single record"}))
    (tmp_path / "lines.json").write_text('{"text": "x y"}\n{"text": "z"}\n')
    (tmp_path / "crlf.jsonl").write_bytes(b'{"text": "p\\u2028q"}\r\n{"text": "r"}\r\n')
    texts = {p.stem: [d.text for d in file_documents([p])] for p in sorted(tmp_path.iterdir())}
    assert texts == {"crlf": ["p\u2028q", "r"], "lines": ["x y", "z"], "list": ["a b", "c d"], "one": ["single record"]}


def test_parquet_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha", None, "beta"]}), tmp_path / "good.parquet")
    assert [d.text for d in file_documents([tmp_path / "good.parquet"])] == ["alpha", "beta"]
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(ValueError, match="ints.parquet: column 'text' must hold strings, it holds int64"):
        file_documents([tmp_path / "ints.parquet"])
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="broken.parquet is not a readable parquet file"):
        file_documents([tmp_path / "broken.parquet"])


def test_a_folder_is_its_supported_files_with_subfolder_domains(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "code").mkdir(parents=True)
    (corpus / "prose").mkdir()
    (corpus / ".git").mkdir()
    (corpus / "code" / "b.py").write_text("def b(): pass\n")
    (corpus / "code" / "a.py").write_text("def a(): pass\n")
    (corpus / "prose" / "story.txt").write_text("once upon a time\n")
    (corpus / "notes.md").write_text("notes\n")
    (corpus / "README.rst").write_text("not a supported suffix\n")
    (corpus / ".git" / "config.txt").write_text("hidden\n")
    docs = file_documents([corpus])
    assert [(d.domain, d.text) for d in docs] == [("code", "def a(): pass\n"), ("code", "def b(): pass\n"),
                                                  ("notes", "notes\n"), ("prose", "once upon a time\n")]
    assert len(file_documents([corpus], max_files=2)) == 2  # max_files limits a folder's files
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="corpus folder .*empty has no files with a supported suffix"):
        file_documents([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="corpus source .*missing does not exist"):
        file_documents([tmp_path / "missing"])


def test_empty_corpus_is_an_error_naming_the_files(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.jsonl").write_text('{"text": "  "}\n{"text": null}\n')
    with pytest.raises(ValueError, match=r"corpus contains no text: the files read \(.*a.txt, .*b.jsonl\)"):
        file_documents([tmp_path / "a.txt", tmp_path / "b.jsonl"])
    with pytest.raises(ValueError, match="list of sources is empty"):
        file_documents([])


# ------------------------------------------------------------------ data module arguments
@pytest.mark.parametrize("kwargs, fragment", [
    (dict(max_files=0), "max_files=0 must be None (every file) or an integer >= 1"),
    (dict(max_files=-3), "max_files=-3 must be None"),
    (dict(vocab_size=0), f"vocab_size=0 must be an integer >= {MIN_VOCAB_SIZE}"),
    (dict(vocab_size=257), "vocab_size=257 must be an integer >= 258: byte-level BPE starts from 256 byte tokens"),
    (dict(vocab_size="4096"), "vocab_size='4096' must be an integer"),
    (dict(seq_len=1), "seq_len=1 must be an integer >= 2"),
    (dict(batch_size=0), "batch_size=0 must be an integer >= 1"),
    (dict(batch_size=True), "batch_size=True must be an integer >= 1"),
    (dict(val_every=1), "val_every=1 must be an integer >= 2"),
    (dict(seed=-1), "seed=-1 must be an integer >= 0"),
    (dict(num_workers=-1), "num_workers=-1 must be an integer >= 0"),
    (dict(source=[]), "source=[] must be 'stdlib', 'hf:NAME', a path or a non-empty list of paths"),
    (dict(source=["a.txt", ""]), "every entry must be a non-empty path, got ''"),
    (dict(source="hf:"), "'hf:' must be followed by a data set name"),
    (dict(source=["stdlib", "a.txt"]), "'stdlib' and 'hf:NAME' are whole corpora"),
    (dict(text_field=""), "text_field='' must be a non-empty string"),
    (dict(skip_bad_files="yes"), "skip_bad_files='yes' must be True or False"),
])
def test_bad_data_module_arguments_name_themselves(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        HizooDataModule(**kwargs)
    assert fragment in str(err.value)


def test_cache_dir_that_is_a_file_and_a_batch_larger_than_the_data(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cache_dir=.*file' must name a folder"):
        HizooDataModule(cache_dir=str(tmp_path / "file"))
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text("a few words of text. " * 300)
    dm = HizooDataModule(source=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], vocab_size=300, seq_len=64,
                         batch_size=512,
                         val_every=2, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"fewer than batch_size=512: not one training batch"):
        dm.setup()


def test_data_module_reads_a_folder_with_jsonl_text_field_and_skips_bad_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("alpha", "beta"):
        (corpus / f"{name}.jsonl").write_text("\n".join(json.dumps({"body": f"{name} text {i} " * 20})
                                                        for i in range(20)))
    (corpus / "junk.txt").write_bytes(b"\xff\xfe\x00\x01" * 100)
    with pytest.warns(UserWarning, match="junk.txt is not UTF-8"):
        dm = HizooDataModule(source=str(corpus), vocab_size=300, seq_len=32, batch_size=2, val_every=4,
                             text_field="body", skip_bad_files=True, cache_dir=str(tmp_path / "cache"))
        dm.setup()
    assert dm.domain_names == ["alpha", "beta"]


# ------------------------------------------------------------------ tokenizer
def test_pre_tokenization_is_gpt2_byte_level_with_long_pieces_cut():
    text = "\n".join(d.text for d in stdlib_documents(max_files=5)) + "\n" + "#" * 150 + " " + "x" * 70
    plain = [piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)]
    cut = [piece for piece, _ in pre_tokenizer().pre_tokenize_str(text)]
    expected = [p[i:i + MAX_PIECE_CHARS] for p in plain for i in range(0, len(p), MAX_PIECE_CHARS)]
    assert cut == expected
    assert sum(len(p) > MAX_PIECE_CHARS for p in plain) >= 2 and max(map(len, cut)) == MAX_PIECE_CHARS


def _no_whitespace(n_chars: int, seed: int = 0) -> str:
    """Words glued together: the repetitive long piece that made BPE training quadratic."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
    return "".join(rng.choice(words) for _ in range(n_chars // 5))[:n_chars]


@pytest.mark.slow  # trains tokenizers on growing corpora
def test_training_on_text_without_whitespace_is_fast_and_linear(tmp_path):
    """Uncut, 100 K / 200 K such characters took 1.7 / 6.7 s (quadratic); cut, 1 M take about a second."""
    times = {}
    for n in (250_000, 1_000_000):
        text = _no_whitespace(n)
        for _ in range(2):  # the faster of two: timing noise only ever adds
            start = time.process_time()  # CPU time of all threads: steadier than wall time on a shared machine
            tok = train_tokenizer([text], 512)
            times[n] = min(times.get(n, float("inf")), time.process_time() - start)
    assert times[1_000_000] < 15, times
    assert times[1_000_000] / max(times[250_000], 1e-3) < 10, times  # 4x the input: ~4x the time, not 16x
    print("CPU seconds of BPE training by characters:", times)
    long_piece = _no_whitespace(100_000, seed=1)
    ids = tok(long_piece)["input_ids"]
    assert tok.decode(ids) == long_piece


def test_saved_tokenizer_cuts_pieces_when_encoding(tmp_path):
    texts = [_no_whitespace(20_000)]
    trained = train_or_load_tokenizer(texts, 300, tmp_path)
    loaded = AutoTokenizer.from_pretrained(next(tmp_path.iterdir()))
    sample = _no_whitespace(5_000, seed=3)
    assert loaded(sample)["input_ids"] == trained(sample)["input_ids"]
    longest = max(len(t) for t in loaded.convert_ids_to_tokens(loaded(sample)["input_ids"]))
    assert longest <= MAX_PIECE_CHARS


def test_cache_key_has_a_version(tmp_path, monkeypatch):
    texts = ["some text to hash"]
    first = tokenizer_module.corpus_hash(texts, 300)
    monkeypatch.setattr(tokenizer_module, "TOKENIZER_VERSION", tokenizer_module.TOKENIZER_VERSION + 1)
    assert tokenizer_module.corpus_hash(texts, 300) != first


@pytest.mark.parametrize("name, content, fragment", [
    ("tokenizer.json", b"", "tokenizer.json is not valid JSON"),
    ("tokenizer.json", b'{"version": "1.0", "trunc', "tokenizer.json is not valid JSON"),
    ("tokenizer_config.json", b"\xff\xfe\x00", "tokenizer_config.json is not valid JSON (UnicodeDecodeError"),
    ("tokenizer_config.json", b"{}", "does not declare the end-of-text token"),
    ("tokenizer.json", None, "tokenizer.json is missing"),
])
def test_corrupt_cache_entry_is_reported_and_rebuilt(tmp_path, name, content, fragment):
    texts = [d.text for d in stdlib_documents(max_files=3)]
    first = train_or_load_tokenizer(texts, 300, tmp_path)
    entry = next(tmp_path.iterdir())
    good = (entry / name).read_bytes()
    (entry / name).unlink() if content is None else (entry / name).write_bytes(content)
    with pytest.warns(UserWarning, match="tokenizer cache entry is unreadable") as caught:
        again = train_or_load_tokenizer(texts, 300, tmp_path)
    message = str(caught[0].message)
    assert fragment in message and str(entry) in message
    sample = "import os\nprint(os.getcwd())\n"
    assert again(sample)["input_ids"] == first(sample)["input_ids"]
    assert (entry / name).read_bytes() == good  # rebuilt in place
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # no staging folder left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_or_load_tokenizer(texts, 300, tmp_path)  # and now read without a warning


def test_interrupted_cache_write_leaves_no_entry(tmp_path, monkeypatch):
    texts = [d.text for d in stdlib_documents(max_files=3)]
    original = PreTrainedTokenizerFast.save_pretrained

    def crash(self, directory, *args, **kwargs):
        original(self, directory, *args, **kwargs)
        raise KeyboardInterrupt  # killed after the files were written, before the rename

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        train_or_load_tokenizer(texts, 300, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", original)
    train_or_load_tokenizer(texts, 300, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
