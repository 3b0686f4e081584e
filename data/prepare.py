"""Tokenize a corpus once into flat token shards for training at scale (as nanoGPT's ``prepare.py`` and
OLMo-core's numpy datasets do)::

    python -m hizoo.data.prepare SOURCE... --tokenizer TOK --out DIR [--num-proc N] [--val-every K]

SOURCE: local files or directories (txt/md/py/jsonl/json/parquet), ``stdlib`` (the embedded corpus),
``hf:NAME`` (a ``datasets`` hub data set, where the hub is reachable) or ``DOMAIN=PATH`` (see
``data/sources.py`` for the document and domain rules). TOK: a Hugging Face tokenizer (local folder or hub
name) or ``bpe:VOCAB`` for hizoo's byte-level BPE trained on the training documents (it needs their text in
memory; for corpora larger than memory use a pretrained tokenizer). Train with ``--data.source DIR``.

The split is ``HizooDataModule``'s: document k (1-based, corpus order) is held out for validation when
``k % val_every == 0``. Every document is followed by the tokenizer's end-of-text token. The folder layout is
described in ``data/shards.py``.

How it runs: the documents are read once into a memory-mapped ``datasets`` table and cut into shards of
about ``--shard-mb`` MB of text at document boundaries (fixed by the text alone). Each shard is tokenized with
``Dataset.map(num_proc=N)`` (which keeps document order) and written atomically with the sha256 of its input
text and output files. A rerun after an interruption keeps every finished shard whose input, tokenizer and
settings are unchanged and whose files still match their hashes, and redoes the rest. Nothing the output
depends on varies with ``--num-proc``, so the folder is byte-identical for any N.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np

from .pretrained import folder_sha256, id_limit, load_tokenizer
from .shards import (DOMAIN_DTYPE, FORMAT, METADATA, SPLITS, TOKENIZER_DIR, VERSION, file_sha256, read_metadata,
                     shard_file, token_dtype)
from .sources import iter_documents

WORK_DIR = ".prepare"  # the unfinished state: document table, tokenized shards in progress, shard records


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _generate_documents(sources: list[str], text_field: str, cache_dir: str):
    for doc in iter_documents(sources, text_field=text_field, cache_dir=cache_dir):
        yield {"text": doc.text, "domain": doc.domain}


def _encode(batch: dict, tokenizer, eos: int) -> dict:
    """Each document's tokens followed by the end-of-text token, as ``HizooDataModule`` packs them."""
    ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return {"input_ids": [doc + [eos] for doc in ids]}


def _text_offsets(column) -> tuple[np.ndarray, object]:
    """(byte offsets [n + 1], data buffer) of a string column, whatever its Arrow string type."""
    import pyarrow as pa

    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    arr = arr.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    return offsets, arr.buffers()[2]


def _domain_index(column, domain_names: list[str]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.index_in(column, value_set=pa.array(domain_names)).to_numpy(zero_copy_only=False).astype(np.int64)


def plan_shards(docs, domain_names: list[str], shard_bytes: int) -> list[dict]:
    """Shard boundaries and input hashes from the text alone: document i (with b_i bytes of UTF-8 before it in
    the corpus) goes to shard floor(b_i / shard_bytes), shards renumbered consecutively. The hash covers each
    shard's texts, their lengths and their domains, so a kept shard is one made from the same input."""
    shards: list[dict] = []
    hashers: list = []
    running, last_raw, start = 0, -1, 0
    for batch in docs.with_format("arrow").iter(batch_size=1024):
        offsets, data = _text_offsets(batch["text"])
        lengths = np.diff(offsets)
        domains = _domain_index(batch["domain"], domain_names)
        raw = (running + np.cumsum(lengths) - lengths) // shard_bytes  # [n] nondecreasing
        running += int(lengths.sum())
        changes = (np.flatnonzero(np.diff(raw)) + 1).tolist()  # documents where the shard number changes
        bounds = [0, *changes, len(raw)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if raw[lo] != last_raw:
                shards.append({"index": len(shards), "documents": [start + lo, start + lo], "text_bytes": 0})
                hashers.append(hashlib.sha256())
                last_raw = int(raw[lo])
            shard, h = shards[-1], hashers[-1]
            shard["documents"][1] = start + hi
            shard["text_bytes"] += int(offsets[hi] - offsets[lo])
            h.update(data[int(offsets[lo]): int(offsets[hi])])
            h.update(lengths[lo:hi].astype("<i8").tobytes())
            h.update(domains[lo:hi].astype("<i8").tobytes())
        start += len(raw)
    for shard, h in zip(shards, hashers):
        shard["text_sha256"] = h.hexdigest()
    return shards


class _SplitWriter:
    """Appends one split's tokens and domain ids of one shard to ``*.tmp`` files, hashing as it writes."""

    def __init__(self, out: Path, split: str, index: int, dtype: str, domain_names: list[str]):
        self.out, self.split, self.dtype, self.domain_names = out, split, dtype, domain_names
        self.names = {kind: shard_file(split, index, kind) for kind in ("tokens", "domains")}
        self.files = {kind: open(out / (name + ".tmp"), "wb") for kind, name in self.names.items()}
        self.hashers = {kind: hashlib.sha256() for kind in self.names}
        self.num_tokens = 0
        self.docs = np.zeros(len(domain_names), np.int64)
        self.tokens = np.zeros(len(domain_names), np.int64)

    def write(self, tokens: np.ndarray, token_domains: np.ndarray, doc_domains: np.ndarray, doc_lengths: np.ndarray):
        for kind, values in (("tokens", tokens.astype(self.dtype)), ("domains", token_domains.astype(DOMAIN_DTYPE))):
            data = values.astype(values.dtype.newbyteorder("<")).tobytes()
            self.files[kind].write(data)
            self.hashers[kind].update(data)
        self.num_tokens += len(tokens)
        self.docs += np.bincount(doc_domains, minlength=len(self.domain_names))
        self.tokens += np.bincount(doc_domains, weights=doc_lengths, minlength=len(self.domain_names)).astype(np.int64)

    def close(self) -> dict:
        for kind, f in self.files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(self.out / (self.names[kind] + ".tmp"), self.out / self.names[kind])
        return {"tokens": self.names["tokens"], "domains": self.names["domains"], "num_tokens": self.num_tokens,
                "tokens_sha256": self.hashers["tokens"].hexdigest(), "domains_sha256": self.hashers["domains"].hexdigest(),
                "documents_per_domain": dict(zip(self.domain_names, self.docs.tolist())),
                "tokens_per_domain": dict(zip(self.domain_names, self.tokens.tolist()))}


def write_shard(docs, shard: dict, out: Path, work: Path, tokenizer, settings: dict, num_proc: int) -> dict:
    """Tokenize the shard's documents with ``num_proc`` processes and write its split files; -> its record."""
    from datasets import Features, List, Value

    lo, hi = shard["documents"]
    part = docs.select(range(lo, hi))  # contiguous: a slice of the memory-mapped table, no copy
    cache = work / f"tokenized-{shard['index']:05d}.arrow"
    encoded = part.map(
        _encode, batched=True, batch_size=256, num_proc=min(num_proc, len(part)) if num_proc > 1 else None,
        fn_kwargs={"tokenizer": tokenizer, "eos": settings["eos_token_id"]}, remove_columns=["text"],
        features=Features({"domain": Value("string"), "input_ids": List(Value("uint32"))}),
        cache_file_name=str(cache), load_from_cache_file=False,
        new_fingerprint=f"{settings['key'][:16]}-{shard['index']}-{uuid.uuid4().hex[:8]}",
        desc=f"tokenize shard {shard['index'] + 1}")
    domain_names, val_every = settings["domains"], settings["val_every"]
    writers = {split: _SplitWriter(out, split, shard["index"], settings["dtype"], domain_names) for split in SPLITS}
    doc = lo
    for batch in encoded.with_format("arrow").iter(batch_size=1024):
        ids = batch["input_ids"].combine_chunks()
        lengths = ids.value_lengths().to_numpy().astype(np.int64)  # [n] tokens per document, end-of-text included
        tokens = ids.flatten().to_numpy()  # [sum(lengths)]
        if tokens.size and int(tokens.max()) >= settings["id_limit"]:
            raise ValueError(f"the tokenizer produced id {int(tokens.max())} >= its vocabulary size {settings['id_limit']}")
        doc_domains = _domain_index(batch["domain"], domain_names)  # [n]
        held_out = (np.arange(doc, doc + len(lengths)) + 1) % val_every == 0  # [n] the data module's rule
        token_held_out = np.repeat(held_out, lengths)
        token_domains = np.repeat(doc_domains, lengths)
        for split, docs_mask, tok_mask in (("train", ~held_out, ~token_held_out), ("validation", held_out, token_held_out)):
            writers[split].write(tokens[tok_mask], token_domains[tok_mask], doc_domains[docs_mask], lengths[docs_mask])
        doc += len(lengths)
    del encoded
    for file in work.glob(f"tokenized-{shard['index']:05d}*"):
        file.unlink()
    return {**shard, "key": settings["key"], "splits": {split: w.close() for split, w in writers.items()}}


def _record_is_valid(record: dict | None, shard: dict, out: Path, settings: dict) -> bool:
    if not record or record.get("key") != settings["key"]:
        return False
    if any(record.get(k) != shard[k] for k in ("documents", "text_bytes", "text_sha256")):
        return False
    for entry in record["splits"].values():
        for kind, dtype in (("tokens", settings["dtype"]), ("domains", DOMAIN_DTYPE)):
            path = out / entry[kind]
            if not path.is_file() or path.stat().st_size != entry["num_tokens"] * np.dtype(dtype).itemsize:
                return False
            if file_sha256(path) != entry[f"{kind}_sha256"]:
                return False
    return True


def _previous_records(out: Path, work: Path) -> dict[int, dict]:
    records: dict[int, dict] = {}
    try:
        for shard in read_metadata(out)["shards"]:
            records[shard["index"]] = shard
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        pass  # no finished folder (or an unreadable one): every shard is checked against the work records only
    for file in sorted((work / "records").glob("*.json")):
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
            records[record["index"]] = record
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            file.unlink()  # a torn record is a shard to redo
    return records


def _save_tokenizer(tokenizer, out: Path) -> str:
    tmp = out / (TOKENIZER_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    sha = folder_sha256(tmp)
    final = out / TOKENIZER_DIR
    if final.is_dir() and folder_sha256(final) == sha:
        shutil.rmtree(tmp)
    else:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return sha


def _resolve_tokenizer(spec: str, docs, val_every: int, cache_dir: str):
    if spec.startswith("bpe:"):
        from .tokenizer import train_or_load_tokenizer

        try:
            vocab_size = int(spec[len("bpe:"):])
        except ValueError:
            raise ValueError(f"tokenizer={spec!r}: expected bpe:VOCAB_SIZE with an integer size") from None
        texts = [t for i, t in enumerate(docs["text"]) if (i + 1) % val_every]  # trained on the training split
        return train_or_load_tokenizer(texts, vocab_size, cache_dir)
    return load_tokenizer(spec)


def prepare(sources: list[str], tokenizer: str, out: str | Path, num_proc: int = 1, val_every: int = 20,
            shard_mb: float = 256.0, text_field: str = "text", cache_dir: str = "runs/cache",
            progress: bool = True) -> dict:
    """Write the prepared folder ``out`` for ``sources`` (see the module docstring); -> its metadata."""
    import datasets
    from datasets import Dataset, Features, Value
    from datasets.exceptions import DatasetGenerationError
    from tqdm.auto import tqdm

    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise ValueError("no corpus source given")
    for name, value, low in (("num_proc", num_proc, 1), ("val_every", val_every, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if not (isinstance(shard_mb, (int, float)) and np.isfinite(shard_mb) and shard_mb > 0):
        raise ValueError(f"shard_mb={shard_mb!r} must be a positive number of megabytes")
    out = Path(out)
    work = out / WORK_DIR
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} is a file; pass a new or empty directory or a prepared folder")
    if out.is_dir() and any(out.iterdir()) and not ((out / METADATA).exists() or work.exists()):
        raise ValueError(f"out={str(out)!r} is a non-empty directory that is not a prepared corpus folder; "
                         f"pass a new or empty directory")
    (work / "records").mkdir(parents=True, exist_ok=True)
    if num_proc > 1:  # forked workers cannot use the tokenizer's own thread pool (and warn about it)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        shutil.rmtree(work / "documents", ignore_errors=True)  # always re-read: the sources may have changed
        try:
            docs = Dataset.from_generator(
                _generate_documents, features=Features({"text": Value("string"), "domain": Value("string")}),
                gen_kwargs={"sources": list(sources), "text_field": text_field, "cache_dir": str(work / "records-cache")},
                cache_dir=str(work / "documents"), fingerprint=uuid.uuid4().hex)
        except DatasetGenerationError as err:  # datasets wraps what the sources raised: pass on the clear error
            if isinstance(err.__cause__, (ValueError, FileNotFoundError, ConnectionError)):
                raise err.__cause__ from None
            raise
        if len(docs) == 0:
            raise ValueError(f"the sources {sources} contain no text")
        if len(docs) < val_every:
            raise ValueError(f"the corpus has {len(docs)} documents; with val_every={val_every} the validation split "
                             f"is empty")
        domain_names = sorted(docs.unique("domain"))
        if len(domain_names) > np.iinfo(DOMAIN_DTYPE).max:
            raise ValueError(f"{len(domain_names)} domains do not fit in {DOMAIN_DTYPE}")
        tok = _resolve_tokenizer(tokenizer, docs, val_every, cache_dir)
        limit = id_limit(tok)
        settings = {"version": VERSION, "tokenizer_sha256": _save_tokenizer(tok, out), "domains": domain_names,
                    "val_every": val_every, "dtype": token_dtype(limit), "text_field": text_field,
                    "eos_token_id": tok.eos_token_id, "id_limit": limit}
        settings["key"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        plan = plan_shards(docs, domain_names, max(1, int(shard_mb * 1e6)))
        previous = _previous_records(out, work)
        records = []
        bar = tqdm(total=sum(s["text_bytes"] for s in plan), unit="B", unit_scale=True, desc="prepare",
                   disable=not progress, file=sys.stderr)
        for shard in plan:
            record = previous.get(shard["index"])
            if not _record_is_valid(record, shard, out, settings):
                record = write_shard(docs, shard, out, work, tok, settings, num_proc)
                _atomic_write_text(work / "records" / f"{shard['index']:05d}.json", json.dumps(record))
            records.append(record)
            bar.update(shard["text_bytes"])
        bar.close()
        meta = _metadata(sources, tokenizer, tok, settings, records)
        keep = {entry[kind] for r in records for entry in r["splits"].values() for kind in ("tokens", "domains")}
        for file in [*out.glob("*.bin"), *out.glob("*.bin.tmp")]:  # an earlier, longer plan; writes cut short
            if file.name not in keep:
                file.unlink()
        _atomic_write_text(out / METADATA, json.dumps(meta, indent=1) + "\n")
        del docs
        shutil.rmtree(work)
        return meta
    finally:
        if not progress and not bars_were_off:
            datasets.enable_progress_bars()


def _metadata(sources: list[str], spec: str, tok, settings: dict, records: list[dict]) -> dict:
    domain_names = settings["domains"]
    splits = {}
    for split in SPLITS:
        docs = {d: sum(r["splits"][split]["documents_per_domain"][d] for r in records) for d in domain_names}
        tokens = {d: sum(r["splits"][split]["tokens_per_domain"][d] for r in records) for d in domain_names}
        splits[split] = {"documents": sum(docs.values()), "tokens": sum(tokens.values()),
                         "documents_per_domain": docs, "tokens_per_domain": tokens}
    return {
        "format": FORMAT, "version": VERSION, "sources": list(sources), "text_field": settings["text_field"],
        "tokenizer": {"name": spec, "path": TOKENIZER_DIR, "sha256": settings["tokenizer_sha256"],
                      "class": type(tok).__name__, "vocab_size": len(tok), "id_limit": settings["id_limit"],
                      "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id},
        "dtype": settings["dtype"], "domain_dtype": DOMAIN_DTYPE, "domains": domain_names,
        "split": {"val_every": settings["val_every"],
                  "rule": "document k (1-based, in corpus order) is held out for validation when k % val_every == 0, "
                          "as HizooDataModule splits; each split is its documents in corpus order, each followed by "
                          "the end-of-text token"},
        "splits": splits,
        "shards": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hizoo.data.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="file, directory, DOMAIN=PATH, 'stdlib' or 'hf:NAME'")
    parser.add_argument("--tokenizer", required=True,
                        help="Hugging Face tokenizer folder or hub name, or bpe:VOCAB to train hizoo's byte-level BPE")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or an earlier prepare's to resume)")
    parser.add_argument("--num-proc", type=int, default=1, help="tokenizer processes (default 1)")
    parser.add_argument("--val-every", type=int, default=20,
                        help="hold out every K-th document for validation (default 20, as HizooDataModule)")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="MB of text per shard (default 256)")
    parser.add_argument("--text-field", default="text", help="record field holding the text (default 'text')")
    parser.add_argument("--cache-dir", default="runs/cache", help="where bpe:VOCAB tokenizers are cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        meta = prepare(args.sources, args.tokenizer, args.out, num_proc=args.num_proc, val_every=args.val_every,
                       shard_mb=args.shard_mb, text_field=args.text_field, cache_dir=args.cache_dir,
                       progress=not args.quiet)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    s = meta["splits"]
    print(f"{args.out}: {s['train']['tokens']:,} training and {s['validation']['tokens']:,} validation tokens "
          f"({s['train']['documents']:,} + {s['validation']['documents']:,} documents, {len(meta['domains'])} domains, "
          f"{meta['dtype']}, {len(meta['shards'])} shards); train with --data.source {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
