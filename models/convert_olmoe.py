"""Command line: ``python -m hizoo.models.convert_olmoe SRC DST`` converts an OLMoE checkpoint directory
(``OlmoeForCausalLM.save_pretrained`` layout) into a hizoo directory loadable with
``AutoModelForCausalLM.from_pretrained`` after ``import hizoo``."""

import argparse
from pathlib import Path

from .conversion import convert_olmoe_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hizoo.models.convert_olmoe", description=__doc__)
    parser.add_argument("src", type=Path, help="OLMoE checkpoint directory")
    parser.add_argument("dst", type=Path, help="output directory for the hizoo model")
    args = parser.parse_args(argv)
    if not (args.src / "config.json").is_file():
        parser.error(f"{args.src} has no config.json: not a transformers checkpoint directory")
    convert_olmoe_checkpoint(str(args.src), str(args.dst))
    print(f"converted {args.src} -> {args.dst}")


if __name__ == "__main__":
    main()
