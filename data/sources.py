"""Corpus sources read lazily, one document at a time, for ``python -m hizoo.data.prepare``.

A source is one of

- ``stdlib``: the embedded corpus (``data.corpus.stdlib_documents``, domain = top-level package);
- ``hf:NAME``: a ``datasets`` hub data set (its ``train`` split, needs the hub), domain = NAME;
- a local file or folder, with the files, order and domains of ``data.corpus.corpus_files`` (a file's domain is
  its stem; a folder's files are sorted, a file in a subfolder belongs to that subfolder's domain):
  ``.txt``/``.md``/``.py`` is one document (read by ``data.corpus.read_texts``), ``.jsonl``/``.json``/``.parquet``
  one document per record (its ``text`` field);
- ``DOMAIN=PATH``: a file or directory whose documents all get the domain ``DOMAIN``.

Documents with no visible text are dropped (as in ``data.corpus``); the order of documents is the order of
the sources, then of the files, then of the records, and it is what the train/validation split rule counts.
Nothing is held in memory beyond one text file or one batch of records, so a prepare of a corpus larger
than memory reads it in bounded memory (records go through ``datasets``' memory-mapped Arrow files).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .corpus import RECORD_SUFFIXES, Document, corpus_files, read_texts, stdlib_documents


def split_domain(source: str) -> tuple[str | None, str]:
    """``"code=src/"`` -> ``("code", "src/")``; a source without ``=`` (or an existing path that contains one)
    has no domain override."""
    if "=" in source and not source.startswith("hf:") and not Path(source).exists():
        domain, path = source.split("=", 1)
        if not domain or not path:
            raise ValueError(f"source {source!r}: expected DOMAIN=PATH with both parts non-empty")
        return domain, path
    return None, source


def _record_texts(table, where: str, text_field: str) -> Iterator[str]:
    if text_field not in table.column_names:
        raise ValueError(f"{where} has no {text_field!r} field; fields: {table.column_names}")
    for batch in table.select_columns([text_field]).iter(batch_size=1024):
        for i, text in enumerate(batch[text_field]):
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(f"{where}: record {text_field!r} is {type(text).__name__}, not text")
            yield text


def _load_records(path: Path, cache_dir: str | None):
    from datasets import load_dataset

    try:
        return load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path), split="train",
                            cache_dir=cache_dir)
    except Exception as err:  # malformed json/parquet: datasets raises several types
        raise ValueError(f"corpus file {path} could not be read as {path.suffix[1:]}: {type(err).__name__}: {err}") \
            from err


def load_hub_table(name: str, split: str = "train", cache_dir: str | None = None, streaming: bool = False):
    """``datasets.load_dataset(name, split=split)`` with a clear error when the hub cannot be reached."""
    from datasets import load_dataset

    try:
        return load_dataset(name, split=split, cache_dir=cache_dir, streaming=streaming)
    except Exception as err:  # offline, unknown name, missing split: datasets raises many types
        raise ConnectionError(
            f"data set {name!r} (split {split!r}) could not be loaded through datasets: {type(err).__name__}: {err}. "
            f"Without access to the hub, pass local files as the corpus source instead.") from err


def iter_documents(sources: list[str], text_field: str = "text", cache_dir: str | None = None) -> Iterator[Document]:
    """The documents of ``sources`` in corpus order (see the module docstring). ``cache_dir``: where ``datasets``
    keeps its Arrow conversion of record files (default: its own cache)."""
    if not sources:
        raise ValueError("no corpus source given")
    for source in sources:
        if source == "stdlib":
            yield from stdlib_documents()
            continue
        if source.startswith("hf:"):
            name = source[len("hf:"):]
            for text in _record_texts(load_hub_table(name, cache_dir=cache_dir), f"data set {name!r}", text_field):
                if text.strip():
                    yield Document(name, text)
            continue
        override, path = split_domain(source)
        for file, domain in corpus_files([path]):  # the in-memory corpus's files, order and domains
            domain = override or domain
            if file.suffix not in RECORD_SUFFIXES:
                texts = read_texts(file, text_field)  # one text file: its UTF-8 and binary checks
            else:  # records through datasets' memory-mapped Arrow files, so a file larger than memory streams
                texts = _record_texts(_load_records(file, cache_dir), f"corpus file {file}", text_field)
            for text in texts:
                if text.strip():
                    yield Document(domain, text)
