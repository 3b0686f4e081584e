"""Data pipeline at scale: prepare throughput, loader throughput against a training step, and training memory
on prepared corpora of different sizes.

    python bench/data.py                       # the figures in bench/README.md (about 10-20 minutes on 2 cores)
    python bench/data.py --sizes 1e6 1e7 --steps 10      # a quicker look

1. **prepare**: ``python -m hizoo.data.prepare`` on the embedded corpus (the standard library's source) with the
   quickstart tokenizer (byte-level BPE, 2048), end to end (read, tokenize, write; interpreter start-up
   excluded), tokens/s with one process and with ``--num-proc`` = every core (``TOKENIZERS_PARALLELISM=false``,
   so one process is one core).
2. **loader**: ``DataLoader`` over the prepared folder's memmap sequences (shuffled, batch 8 x 128 as the
   quickstart), tokens/s with 0 and 2 worker processes, against the tokens/s a training step (forward, backward,
   AdamW) of the quickstart model consumes in the same process: the ratio says how far the loader is from
   being the bottleneck (goal >= 20x).
3. **memory**: peak RSS of a short ``train.py`` run (the quickstart config) on prepared synthetic corpora of
   each ``--sizes`` (tokens; whitespace-separated words from a 4096-word vocabulary and a word-level
   tokenizer, two domains), each run in a fresh process (goal: equal within 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"


_CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})


import threading


def _status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024


def peak_mib():  # VmHWM: this process's own peak (ru_maxrss would carry over the parent's RSS from the fork)
    return _status("VmHWM")


ANON = [0.0]  # peak anonymous memory (heap, tensors), sampled: RSS also counts mapped file pages (Arrow caches,
              # shared libraries), which are page cache the kernel can reclaim


def _sample():
    while True:
        ANON[0] = max(ANON[0], _status("RssAnon"))
        time.sleep(0.02)


threading.Thread(target=_sample, daemon=True).start()


if sys.argv[1] == "prepare":
    from hizoo.data.prepare import prepare

    *sources, tokenizer, out, num_proc = sys.argv[2:]
    start = time.perf_counter()
    meta = prepare(sources, tokenizer, out, num_proc=int(num_proc), progress=False)
    seconds = time.perf_counter() - start
    tokens = meta["splits"]["train"]["tokens"] + meta["splits"]["validation"]["tokens"]
    print("RESULT", json.dumps({{"tokens": tokens, "seconds": seconds, "peak_mib": peak_mib(), "anon_mib": ANON[0]}}))
else:
    import train

    train.main(sys.argv[2:])
    print("RESULT", json.dumps({{"peak_mib": peak_mib(), "anon_mib": ANON[0]}}))
"""


def _child(work: Path, *args: str) -> dict:
    """Run a prepare or a training in a fresh process: its result, with its own peak resident memory (MiB)."""
    script = work / "bench_child.py"
    script.write_text(_CHILD.format(repo=str(REPO)))
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])


def _prepare(work: Path, sources: list[str], tokenizer: str, out: Path, num_proc: int) -> dict:
    """tokens, seconds (interpreter start-up and imports excluded) and peak memory of one prepare."""
    return _child(work, "prepare", *sources, tokenizer, str(out), str(num_proc))


def bench_prepare(work: Path) -> dict:
    from hizoo.data import stdlib_documents, train_or_load_tokenizer

    config = yaml.safe_load(QUICKSTART.read_text())["data"]
    docs = stdlib_documents(config["max_files"])
    tok = train_or_load_tokenizer([d.text for d in docs], config["vocab_size"], work / "cache")
    tok_dir = work / "quickstart-tokenizer"
    tok.save_pretrained(tok_dir)
    cores = os.cpu_count() or 1
    rows = {}
    for num_proc in sorted({1, cores}):
        row = _prepare(work, ["stdlib"], str(tok_dir), work / f"stdlib-{num_proc}", num_proc)
        rows[num_proc] = {**row, "tokens_per_s": row["tokens"] / row["seconds"]}
    same = all((work / f"stdlib-1" / f.name).read_bytes() == f.read_bytes()
               for f in (work / f"stdlib-{cores}").iterdir() if f.is_file())
    return {"rows": rows, "identical": same, "folder": work / "stdlib-1", "tokenizer": tok}


def bench_loader(folder: Path, tokenizer, seconds: float = 5.0) -> dict:
    from torch.utils.data import DataLoader, RandomSampler

    from hizoo import HizooConfig, HizooForCausalLM
    from hizoo.data.shards import MemmapSequences, SplitTokens, read_metadata

    config = yaml.safe_load(QUICKSTART.read_text())
    seq_len, batch = config["data"]["seq_len"], config["data"]["batch_size"]
    data = MemmapSequences(SplitTokens(folder, read_metadata(folder), "train"), seq_len)
    model = HizooForCausalLM(HizooConfig(**{**config["model"]["model_config"], "vocab_size": len(tokenizer)}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.stack([data[i]["input_ids"] for i in range(batch)])
    times = []
    for step in range(6):
        start = time.perf_counter()
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
    result = {"step_tokens_per_s": ids.numel() / float(np.median(times))}
    for workers in (0, 2):
        loader = DataLoader(data, batch_size=batch, sampler=RandomSampler(data, generator=torch.Generator().manual_seed(0)),
                            num_workers=workers, drop_last=True, persistent_workers=workers > 0)
        it, n = iter(loader), 0
        next(it)  # worker start-up is not throughput
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            try:
                n += next(it)["input_ids"].numel()
            except StopIteration:
                it = iter(loader)
        result[f"loader_{workers}"] = n / (time.perf_counter() - start)
        del it, loader
    return result


def synthetic_corpus(folder: Path, tokens: int, seed: int = 0) -> list[str]:
    """Two jsonl files of documents of 2000 random words (Zipf-like frequencies) from a 4096-word vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(4095)])
    probs = 1.0 / np.arange(1, 4096)
    probs /= probs.sum()
    per_doc = 2000
    n_docs = max(2, tokens // (per_doc + 1))  # every document also gets its end-of-text token
    files = [folder / "web.jsonl", folder / "code.jsonl"]
    handles = [open(f, "w") for f in files]
    for d in range(n_docs):
        text = " ".join(words[rng.choice(4095, size=per_doc, p=probs)])
        handles[d % 2].write(json.dumps({"text": text}) + "\n")
    for h in handles:
        h.close()
    return [str(f) for f in files]


def word_tokenizer(folder: Path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(4095)}
    vocab["<|endoftext|>"] = 4095
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
    return str(folder)


def train_memory(folder: Path, work: Path, steps: int) -> dict:
    """Peak resident and peak anonymous memory (MiB) of a quickstart training run of ``steps`` steps on
    ``folder``, in a fresh process."""
    run_dir = work / f"run-{folder.name}"
    args = ["fit", "--config", str(QUICKSTART), "--data.source", str(folder), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.limit_val_batches", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger", "false"]
    return _child(work, "train", *args)


def main() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one tokenizer thread per process: per-process figures
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e7, 1e8], help="corpus sizes in tokens")
    parser.add_argument("--steps", type=int, default=30, help="training steps of each memory run")
    args = parser.parse_args()
    holder = None if args.work else tempfile.TemporaryDirectory()
    work = Path(args.work or holder.name)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}\n")

    prep = bench_prepare(work)
    print("| prepare (stdlib, BPE 2048) | tokens | seconds | tokens/s | main process peak RSS / anon (MiB) |\n"
          "|---|---|---|---|---|")
    for num_proc, row in prep["rows"].items():
        print(f"| --num-proc {num_proc} | {row['tokens']:,} | {row['seconds']:.1f} | {row['tokens_per_s']:,.0f} "
              f"| {row['peak_mib']:,.0f} / {row['anon_mib']:,.0f} |")
    print(f"\noutput byte-identical across --num-proc: {prep['identical']}\n")

    load = bench_loader(prep["folder"], prep["tokenizer"])
    step = load["step_tokens_per_s"]
    print("| quickstart batch 8 x 128 | tokens/s | x training step |\n|---|---|---|")
    print(f"| training step (fwd+bwd+AdamW) | {step:,.0f} | 1.0 |")
    for workers in (0, 2):
        rate = load[f"loader_{workers}"]
        print(f"| memmap loader, num_workers={workers} | {rate:,.0f} | {rate / step:,.0f} |")

    print(f"\n| synthetic corpus | prepare tokens/s (--num-proc {os.cpu_count()}) | prepare peak RSS / anon (MiB) "
          f"| shard MB | training peak RSS / anon (MiB), {args.steps} steps |\n|---|---|---|---|---|")
    tok = word_tokenizer(work / "word-tokenizer")
    memory = []
    for size in args.sizes:
        files = synthetic_corpus(work / f"synthetic-{size:.0e}", int(size))
        out = work / f"prepared-{size:.0e}"
        row = _prepare(work, files, tok, out, os.cpu_count() or 1)
        mb = sum(f.stat().st_size for f in out.glob("*.bin")) / 1e6
        for f in files:
            os.unlink(f)  # only the shards are needed from here on
        memory.append(train_memory(out, work, args.steps))
        print(f"| {row['tokens']:,} tokens | {row['tokens'] / row['seconds']:,.0f} | {row['peak_mib']:,.0f} / "
              f"{row['anon_mib']:,.0f} | {mb:,.0f} | {memory[-1]['peak_mib']:,.0f} / {memory[-1]['anon_mib']:,.0f} |")
    if len(memory) > 1:
        print(f"\ntraining peak RSS, largest / smallest corpus: {memory[-1]['peak_mib'] / memory[0]['peak_mib']:.3f} "
              f"(anonymous: {memory[-1]['anon_mib'] / memory[0]['anon_mib']:.3f})")
    if holder is not None:
        holder.cleanup()


if __name__ == "__main__":
    main()
