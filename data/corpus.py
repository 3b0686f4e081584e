"""Corpora: the embedded default (the Python standard library's own source) and local files.

A corpus is a list of ``Document(domain, text)``. Domains label where a document comes from, so routing
analysis can ask which experts a domain uses.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Document:
    domain: str
    text: str


_SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "idle_test", "__pycache__", "lib2to3"}


def stdlib_documents(max_files: int | None = None) -> list[Document]:
    """The running interpreter's standard library ``.py`` files, test suites excluded, in sorted path order.

    Domain = top-level package (``asyncio``, ``email``, …); top-level modules share the domain ``toplevel``.
    ``max_files`` keeps an evenly spaced subset (small runs and tests keep several domains).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))
    if max_files is not None and max_files < len(paths):
        step = len(paths) / max_files
        paths = [paths[int(i * step)] for i in range(max_files)]
    docs = []
    for path in paths:
        rel = path.relative_to(root).parts
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            docs.append(Document(rel[0] if len(rel) > 1 else "toplevel", text))
    if not docs:
        raise ValueError(f"the standard library at {root} has no .py files: the embedded corpus is empty")
    return docs


def file_documents(paths: list[str], text_field: str = "text") -> list[Document]:
    """Local ``.txt``/``.md`` files (one document each) and ``.jsonl``/``.json``/``.parquet`` files (one document
    per record, read with ``datasets``); the domain is the file's stem."""
    docs = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {path} does not exist")
        if path.suffix in (".txt", ".md", ".py"):
            docs.append(Document(path.stem, path.read_text(encoding="utf-8", errors="replace")))
            continue
        if path.suffix not in (".jsonl", ".json", ".parquet"):
            raise ValueError(f"corpus file {path}: suffix {path.suffix!r} is not one of .txt .md .py .jsonl .json .parquet")
        from datasets import load_dataset

        table = load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path), split="train")
        if text_field not in table.column_names:
            raise ValueError(f"corpus file {path} has no {text_field!r} field; fields: {table.column_names}")
        docs.extend(Document(path.stem, t) for t in table[text_field] if t)
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ValueError(f"corpus files {paths} contain no text")
    return docs


def hub_documents(name: str, split: str = "train", text_field: str = "text") -> list[Document]:
    """A ``datasets`` hub data set (needs network access to the hub); the domain is the data set's name."""
    from datasets import load_dataset

    try:
        table = load_dataset(name, split=split)
    except Exception as err:  # offline, unknown name, missing split: datasets raises many types
        raise ConnectionError(
            f"data set {name!r} (split {split!r}) could not be loaded through datasets: {type(err).__name__}: {err}. "
            f"Without access to the hub, pass local files as the corpus source instead.") from err
    if text_field not in table.column_names:
        raise ValueError(f"data set {name!r} has no {text_field!r} field; fields: {table.column_names}")
    docs = [Document(name, t) for t in table[text_field] if t and t.strip()]
    if not docs:
        raise ValueError(f"data set {name!r} contains no text")
    return docs
