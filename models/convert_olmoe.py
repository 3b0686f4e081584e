"""Command line: ``python -m hizoo.models.convert_olmoe SRC DST [--overwrite]`` converts an OLMoE checkpoint
directory (``OlmoeForCausalLM.save_pretrained`` layout) into a hizoo directory loadable with
``AutoModelForCausalLM.from_pretrained`` after ``import hizoo``, or with ``trust_remote_code=True`` without hizoo
(the directory carries its modeling code, ``auto_map``, the OLMoE config's special tokens and a model card).

SRC must be an OLMoE checkpoint (config.json with model_type "olmoe") whose files hold every weight; DST must not
be, contain or lie inside SRC, must not be a file, and must be empty or absent unless --overwrite is given (which
replaces it). Every hizoo weight is copied from an OLMoE tensor and checked after writing; DST appears only once
complete. Any problem exits with status 2 and a message, writing nothing.
"""

import argparse
from pathlib import Path

from .conversion import convert_olmoe_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hizoo.models.convert_olmoe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="OLMoE checkpoint directory")
    parser.add_argument("dst", type=Path, help="output directory for the hizoo model")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists and is not empty")
    args = parser.parse_args(argv)
    try:
        written = convert_olmoe_checkpoint(args.src, args.dst, overwrite=args.overwrite)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    print(f"converted {args.src} -> {args.dst}: {written} weights, each copied from an OLMoE tensor and verified")


if __name__ == "__main__":
    main()
