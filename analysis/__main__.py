"""python -m hizoo.analysis CHECKPOINT_OR_HF_DIR [--data FILE ...] [--out DIR] [--seq-len S] [--num-seqs B]

Runs the model on held-out data and writes every figure as PNG, ``report.json`` with all metrics and
``summary.txt``. Data: ``--data`` (text files tokenized with the tokenizer saved next to the model; with several
files each is a domain and per-domain routing is reported), else a few sequences of a Python standard-library
source file tokenized with that tokenizer, else random token ids (the summary says which).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ..models.files import atomic_write_json, atomic_write_text, save_figure
from .loading import load_model
from .plots import figures
from .report import diagnose, summarize


def _tokenizer(path: Path):
    directory = path if path.is_dir() else path.parent
    if not (directory / "tokenizer.json").exists() and not (directory / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def held_out_ids(tokenizer, texts: dict[str, str] | None, vocab_size: int, num_seqs: int, seq_len: int,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None, str]:
    """-> (input_ids [B, S], domain_ids [B, S] or None, domain names or None, description of the data).

    ``texts``: domain name -> text (each --data file is one domain); up to ``num_seqs`` sequences per domain."""
    if tokenizer is not None:
        if not texts:
            texts = {"argparse.py": Path(argparse.__file__).read_text()}  # a standard-library file is always there
            source = "the standard library's argparse.py"
        else:
            source = ", ".join(texts)
        rows, domains = [], []
        for d, (name, text) in enumerate(texts.items()):
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
            n = min(num_seqs, len(ids) // seq_len)
            if n < 1:
                raise ValueError(f"{name} gives only {len(ids)} tokens, fewer than --seq-len {seq_len}")
            rows.append(ids[: n * seq_len].view(n, seq_len))
            domains.append(torch.full((n, seq_len), d))
        input_ids = torch.cat(rows)
        multi = len(texts) > 1
        return (input_ids, torch.cat(domains) if multi else None, list(texts) if multi else None,
                f"{len(input_ids)} sequences of {seq_len} tokens from {source}")
    if texts:
        raise ValueError("--data needs a tokenizer saved next to the model (tokenizer.json); none was found")
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab_size, (num_seqs, seq_len), generator=g), None, None,
            f"{num_seqs} sequences of {seq_len} RANDOM token ids (no tokenizer next to the model): losses and "
            "routing are not representative of real data")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _read_data(parser: argparse.ArgumentParser, files: list[str]) -> dict[str, str]:
    """file name -> UTF-8 text of each --data file; a missing, binary or empty file stops with its path."""
    texts = {}
    for name in files:
        path = Path(name)
        if not path.is_file():
            parser.error(f"--data {name}: {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            parser.error(f"--data {name}: not UTF-8 text (byte {err.start}: {err.reason})")
        if not text.strip():
            parser.error(f"--data {name}: the file has no text")
        if path.name in texts:
            parser.error(f"--data {name}: two files named {path.name!r}; each file is a domain named after it")
        texts[path.name] = text
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hizoo.analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Lightning .ckpt file or exported HF directory")
    parser.add_argument("--data", nargs="+", metavar="FILE",
                        help="text files of held-out data, tokenized with the model's tokenizer; with several files "
                             "each file is a domain for per-domain routing")
    parser.add_argument("--out", default="analysis_out", help="output directory (default: analysis_out)")
    parser.add_argument("--seq-len", type=_positive_int, default=256,
                        help="tokens per sequence (default 256; at most the model's max_position_embeddings)")
    parser.add_argument("--num-seqs", type=_positive_int, default=8, help="sequences per domain (default 8)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the stream-ablation losses")
    args = parser.parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file; give a folder (it is created if missing)")
    texts = _read_data(parser, args.data) if args.data else None

    path = Path(args.model)
    try:  # a missing, corrupt, unsafe or mismatched model is the user's input: a message, not a traceback
        model = load_model(path)
    except (OSError, ValueError) as err:
        parser.error(f"cannot load {path}: {err}")
    model.eval()
    seq_len = min(args.seq_len, getattr(model.config, "max_position_embeddings", args.seq_len))
    if seq_len < args.seq_len:
        print(f"--seq-len {args.seq_len} is longer than the model's max_position_embeddings; using {seq_len}",
              file=sys.stderr)
    try:
        input_ids, domain_ids, domain_names, source = held_out_ids(
            _tokenizer(path), texts, model.config.vocab_size, args.num_seqs, seq_len)
    except ValueError as err:
        parser.error(str(err))

    report = diagnose(model, input_ids, domain_ids, domain_names, ablation=not args.no_ablation)
    report.data = source
    report.model_path = str(path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    import matplotlib.pyplot as plt

    for name, fig in figures(report).items():  # every file written atomically: a kill leaves no half file
        file = out / (name.replace("/", "_") + ".png")
        save_figure(fig, file, dpi=110)
        plt.close(fig)
        written.append(file.name)
    report.figures = written
    atomic_write_json(out / "report.json", report.to_dict(), indent=1, default=str)
    lines = [f"data: {source}"] + summarize(report)
    atomic_write_text(out / "summary.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {len(written)} figures, report.json and summary.txt to {out}{os.sep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
