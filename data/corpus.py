"""Corpora: the embedded default (the Python standard library's own source), local files and folders, hub data.

A corpus is a list of ``Document(domain, text)``. Domains label where a document comes from, so routing
analysis can ask which experts a domain uses.

Local sources (``file_documents``): ``.txt``/``.md``/``.py`` files are one document each; ``.jsonl``, ``.json``
(a list of records, one record, or JSON lines) and ``.parquet`` files give one document per record, from the
record's ``text_field``. A file's domain is its stem. A folder stands for the supported files under it, in
sorted path order (hidden files and folders left out): a file directly in it is its own domain (its stem), a file
in a subfolder belongs to that subfolder's domain (its name), as the standard-library corpus groups modules by
package. Text must be UTF-8: a binary or otherwise undecodable file, malformed JSON, a record without the text
field or with a non-string text is an error naming the file and the line or record (``skip_bad_files=True``
skips such files with a warning instead).
"""

from __future__ import annotations

import json
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Document:
    domain: str
    text: str


TEXT_SUFFIXES = (".txt", ".md", ".py")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + RECORD_SUFFIXES
_SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "idle_test", "__pycache__", "lib2to3"}


class CorpusFileError(ValueError):
    """A corpus file that cannot be used as text (the message names the file and the line or record)."""


def check_max_files(max_files: int | None) -> None:
    if max_files is not None and (isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1):
        raise ValueError(f"max_files={max_files!r} must be None (every file) or an integer >= 1")


def _evenly_spaced(paths: list[Path], max_files: int | None) -> list[Path]:
    """At most ``max_files`` of ``paths``, evenly spaced (a small subset still spans every domain)."""
    if max_files is None or max_files >= len(paths):
        return paths
    step = len(paths) / max_files
    return [paths[int(i * step)] for i in range(max_files)]


def stdlib_documents(max_files: int | None = None) -> list[Document]:
    """The running interpreter's standard library ``.py`` files, test suites excluded, in sorted path order.

    Domain = top-level package (``asyncio``, ``email``, …); top-level modules share the domain ``toplevel``.
    ``max_files`` keeps an evenly spaced subset (small runs and tests keep several domains).
    """
    check_max_files(max_files)
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))
    docs = []
    for path in _evenly_spaced(paths, max_files):
        rel = path.relative_to(root).parts
        text = path.read_text(encoding="utf-8", errors="replace")  # the interpreter's own source (PEP 3120: UTF-8)
        if text.strip():
            docs.append(Document(rel[0] if len(rel) > 1 else "toplevel", text))
    if not docs:
        raise ValueError(f"the standard library at {root} has no .py files: the embedded corpus is empty")
    return docs


def corpus_files(sources: list[str | Path], max_files: int | None = None) -> list[tuple[Path, str]]:
    """(file, domain) for each source: a file is itself (domain = its stem); a folder is its supported files
    (module docstring), at most ``max_files`` of them per folder, evenly spaced."""
    check_max_files(max_files)
    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise ValueError(f"corpus folder {path} has no files with a supported suffix "
                                 f"({' '.join(SUPPORTED_SUFFIXES)}), in it or in its subfolders")
            for file in _evenly_spaced(found, max_files):
                rel = file.relative_to(path).parts
                files.append((file, rel[0] if len(rel) > 1 else file.stem))
        elif path.is_file():
            if path.suffix not in SUPPORTED_SUFFIXES:
                raise ValueError(f"corpus file {path}: suffix {path.suffix!r} is not one of {' '.join(SUPPORTED_SUFFIXES)}")
            files.append((path, path.stem))
        elif path.exists():
            raise ValueError(f"corpus source {path} is neither a file nor a folder")
        else:
            raise FileNotFoundError(f"corpus source {path} does not exist (a file or a folder of files is expected)")
    return files


def file_documents(paths: list[str | Path], text_field: str = "text", skip_bad_files: bool = False,
                   max_files: int | None = None) -> list[Document]:
    """Documents of local files and folders (module docstring). ``max_files`` limits the files taken from each
    folder; files named explicitly are all read."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ValueError("no corpus files given: the list of sources is empty")
    docs, read = [], []
    for path, domain in corpus_files(paths, max_files):
        try:
            texts = read_texts(path, text_field)
        except CorpusFileError as err:
            if not skip_bad_files:
                raise CorpusFileError(f"{err}. Fix or remove the file, or set skip_bad_files=True to skip such files"
                                      ) from None
            warnings.warn(f"skipping a corpus file (skip_bad_files=True): {err}", stacklevel=2)
            continue
        read.append(str(path))
        docs.extend(Document(domain, text) for text in texts if text.strip())
    if not docs:
        shown = ", ".join(read[:5]) + (f" and {len(read) - 5} more" if len(read) > 5 else "")
        raise ValueError(f"the corpus contains no text: the files read ({shown or 'none'}) are empty or whitespace only")
    return docs


def read_texts(path: Path, text_field: str = "text") -> list[str]:
    """The texts of one corpus file; CorpusFileError names the file and, for records, the line or record."""
    if path.suffix == ".parquet":
        return _parquet_texts(path, text_field)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorpusFileError(f"corpus file {path} is not UTF-8 text (byte {err.start}: {err.reason}); a binary "
                              f"file?") from None
    if "\x00" in text:
        raise CorpusFileError(f"corpus file {path} contains NUL bytes at offset {text.index(chr(0))}: a binary "
                              f"file, not text") from None
    if path.suffix in TEXT_SUFFIXES:
        return [text]
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":
                raise CorpusFileError(f"corpus file {path}, line {err.lineno}: not valid JSON ({err.msg}, column "
                                      f"{err.colno})") from None
        else:  # a list of records, or one record
            records = data if isinstance(data, list) else [data]
            return [t for i, r in enumerate(records) if (t := _record_text(r, f"{path}, record {i}", text_field))]
    # JSON lines (.jsonl, or a .json file holding one JSON value per line)
    texts = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusFileError(f"corpus file {path}, line {lineno}: not valid JSON ({err.msg}, column "
                                  f"{err.colno})") from None
        if text_ := _record_text(record, f"{path}, line {lineno}", text_field):
            texts.append(text_)
    return texts


def _record_text(record, where: str, text_field: str) -> str | None:
    if not isinstance(record, dict):
        raise CorpusFileError(f"corpus file {where}: a record must be a JSON object with a {text_field!r} field, "
                              f"got {type(record).__name__}")
    if text_field not in record:
        raise CorpusFileError(f"corpus file {where} has no {text_field!r} field; its fields: {sorted(record)[:10]}")
    value = record[text_field]
    if value is not None and not isinstance(value, str):
        raise CorpusFileError(f"corpus file {where}: field {text_field!r} must be a string (or null), got "
                              f"{type(value).__name__} {str(value)[:40]!r}")
    return value


def _parquet_texts(path: Path, text_field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if text_field not in schema.names:
            raise CorpusFileError(f"corpus file {path} has no {text_field!r} column; its columns: {schema.names[:10]}")
        column_type = schema.field(text_field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise CorpusFileError(f"corpus file {path}: column {text_field!r} must hold strings, it holds {column_type}")
        return [t for t in pq.read_table(path, columns=[text_field]).column(text_field).to_pylist() if t]
    except (pa.ArrowException, OSError) as err:
        raise CorpusFileError(f"corpus file {path} is not a readable parquet file ({type(err).__name__}: {err})"
                              ) from None


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
    docs = []
    for i, text in enumerate(table[text_field]):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"data set {name!r}, record {i}: field {text_field!r} must be a string, got "
                             f"{type(text).__name__}")
        if text and text.strip():
            docs.append(Document(name, text))
    if not docs:
        raise ValueError(f"data set {name!r} contains no text")
    return docs
