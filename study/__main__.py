"""python -m hizoo.study {moe,streams} [--scale toy|cpu|gpu] [--jobs N] [--seeds N] [--variants NAME ...] [--out DIR]

moe:     dense (active-parameter matched), top-k softmax (OLMoE; renormalized as in Mixtral), group-limited
         with loss-free bias (DeepSeek-V3), Hi-MoE (reference grouping, k_g = 2; and without its intra-group
         term) and Hi-MoE with k_g = 1, at equal tokens and equal total/active parameters; validation
         perplexity, expert CV, MaxVio, group CV, domain specialization.
streams: plain residual, then HC and mHC with each stream_init (copy = symmetric; lss, rotate, split,
         perturb break the symmetry); perplexity, dominant-stream share, effective streams, ‖M − I‖,
         stream-ablation loss.

Writes results.md (table, mean ± std over seeds), results.json (every run), curves.png, a study figure,
figures/<variant>_*.png and TensorBoard logs (tensorboard/<variant>/seed<k>) to --out. Runs already in --out
are reused: an interrupted study continues where it stopped (--fresh retrains everything).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from ..models.files import atomic_write_json
from .report import table, write
from .runner import CorruptResultError, run_study
from .variants import SCALES, STUDIES, select


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hizoo.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--scale", choices=list(SCALES), default="cpu",
                        help="model size, data and budget, configs/study/<scale>.yaml (default cpu: 33 (moe) and "
                             "54 (streams) runs, about 65 and 110 minutes of one-thread run time, divided by --jobs)")
    parser.add_argument("--seeds", type=int, help="number of seeds 0..N-1 (default: the scale's)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: the scale's)")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="a subset of the study's variants")
    parser.add_argument("--data", nargs="+", metavar="FILE",
                        help="corpus files (or one hf:NAME) instead of the embedded standard-library corpus")
    parser.add_argument("--out", help="output folder (default runs/study_<study>_<scale>)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs already present in --out")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, one thread each (on a CPU: up to the number of cores)")
    args = parser.parse_args(argv)
    for name in ("seeds", "steps", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file; give a folder (it is created if missing)")
    for entry in args.data or []:
        if entry.startswith("hf:") and len(args.data) > 1:
            parser.error(f"--data {entry}: a hub data set is a whole corpus; give it alone")
        if not entry.startswith("hf:") and not Path(entry).exists():
            parser.error(f"--data {entry}: does not exist (a corpus file or folder, or hf:NAME)")

    scale = SCALES[args.scale]
    try:
        variants = select(STUDIES[args.study](scale), args.variants)
    except ValueError as err:
        parser.error(str(err))
    seeds = list(range(args.seeds or scale.seeds))
    out = Path(args.out or f"runs/study_{args.study}_{args.scale}")
    source = None
    if args.data:
        source = args.data[0] if len(args.data) == 1 and args.data[0].startswith("hf:") else args.data
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one line per run instead of Lightning's banner
    try:
        results = run_study(variants, scale, seeds, out, source=source, steps=args.steps, fresh=args.fresh,
                            jobs=args.jobs)
    except CorruptResultError as err:  # a damaged result.json of an earlier run: say which and how to recover
        parser.exit(1, f"{parser.prog}: error: {err}\n")

    command = "python -m hizoo.study " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    atomic_write_json(out / "results.json", results, default=str)
    page = write(args.study, results, out, command)
    print()
    print(table(args.study, results))
    print(f"\nwrote {page}, results.json, figures and TensorBoard logs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
