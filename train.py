"""hizoo's main job: pretraining with Lightning.

    python train.py                                   # configs/quickstart.yaml
    python train.py fit --config configs/X.yaml       # any config; every LightningCLI override works
    python train.py fit --config configs/X.yaml --ckpt_path last    # continue the run after a stop or crash
    python train.py test --config configs/X.yaml --ckpt_path last   # test/loss, test/ppl (with data.test_fraction)
    python train.py predict --config configs/X.yaml --ckpt_path last --data.predict_prompts prompts.txt

A run is one folder, ``trainer.default_root_dir`` (``runs/<config>``): TensorBoard logs, ``config.yaml``,
``checkpoints/last.ckpt`` and, at the end of ``fit``, the model exported as a Hugging Face directory
``hf_model/`` (config, safetensors, tokenizer, modeling code, model card), loadable with ``AutoModelForCausalLM``
after ``import hizoo``, or with ``trust_remote_code=True`` where hizoo is not installed. SIGTERM/SIGUSR1 save a
checkpoint and exit with status 128 + signal (see ``hizoo.training.cli``).
"""

import re
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser

from hizoo.data import HizooDataModule
from hizoo.models.configuration import closest_name
from hizoo.models.lightning import HizooLightningModule
from hizoo.training.cli import HizooCLI
from hizoo.training.run_folder import RunFolderInUse

QUICKSTART = Path(__file__).resolve().parent / "configs" / "quickstart.yaml"


class HizooArgumentParser(LightningArgumentParser):
    """LightningCLI's parser; an unknown option (``--model.model_config.routr``, a misspelled YAML key) is
    rejected at parse time as before, and the message names the closest valid option."""

    _UNKNOWN = (re.compile(r"Option '([^']+)' is not accepted"), re.compile(r"does not accept option '([^']+)'"))

    def error(self, message: str, ex: Exception | None = None):
        return super().error(message + "".join(f"\n  did you mean --{close}?" for close in self._closest(message)), ex)

    def _closest(self, message: str) -> list[str]:
        unknown = [m.group(1) for pattern in self._UNKNOWN for m in pattern.finditer(message)]
        group = re.search(r"Group '([^']+)' does not accept", message)
        unknown = [f"{group.group(1)}.{key}" for key in unknown] if group else unknown
        if "unrecognized arguments:" in message:
            unknown += [a[2:].split("=")[0] for a in message.split("unrecognized arguments:")[1].split() if a[:2] == "--"]
        known = self._option_keys()
        found = []
        for key in unknown:
            parent, _, leaf = key.rpartition(".")
            siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
            close = closest_name(leaf, siblings) if siblings else closest_name(key, known)
            if close:
                found.append(f"{parent}.{close}" if siblings and parent else close)
        return found

    def _option_keys(self) -> list[str]:
        keys, parsers = [], [self]
        while parsers:
            parser = parsers.pop()
            keys += [a.dest for a in parser._actions if a.option_strings and a.dest not in ("help", "config")]
            subcommands = getattr(parser, "_subcommands_action", None)
            parsers += list(subcommands._name_parser_map.values()) if subcommands else []
        return keys


def main(args: list[str] | None = None, trainer_defaults: dict | None = None) -> HizooCLI:
    """``args`` as on the command line; ``trainer_defaults`` as LightningCLI's (e.g. extra callbacks)."""
    if args is None and not sys.argv[1:]:
        args = ["fit", "--config", str(QUICKSTART)]
    return HizooCLI(HizooLightningModule, HizooDataModule, args=args, trainer_defaults=trainer_defaults,
                    parser_class=HizooArgumentParser)


if __name__ == "__main__":
    try:
        main()
    except RunFolderInUse as err:  # a usage error: the message says what to do, a traceback would only hide it
        sys.exit(f"hizoo: {err}")
