"""hizoo's main job: pretraining with Lightning.

    python train.py                                   # configs/quickstart.yaml
    python train.py fit --config configs/X.yaml       # any config; every LightningCLI override works
    python train.py fit --config configs/X.yaml --ckpt_path last    # continue the run after a stop or crash
    python train.py test --config configs/X.yaml --ckpt_path last   # test/loss, test/ppl (with data.test_fraction)
    python train.py predict --config configs/X.yaml --ckpt_path last --data.predict_prompts prompts.txt

Installed from a wheel (no checkout), ``python -m hizoo.train`` and the ``hizoo-train`` command are the
same program: the configs ship inside the package, and ``--config`` names one by its preset name (``--config
himoe``) or by its checkout path (``--config configs/himoe.yaml``) when no such file exists where you run.

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

CONFIGS = Path(__file__).resolve().parent / "configs"  # shipped with the package (pyproject's package-data)
QUICKSTART = CONFIGS / "quickstart.yaml"


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


def packaged_config(value: str) -> str:
    """The config file ``--config value`` means: ``value`` itself when that file exists; otherwise the packaged
    config it names, by preset name (``himoe``, ``himoe.yaml``) or by its checkout path (``configs/himoe.yaml``),
    so the README's commands work outside a checkout; otherwise ``value`` unchanged (the parser then reports it)."""
    if value.lstrip().startswith(("{", "[")) or "\n" in value or "/" not in value and ":" in value:
        return value  # inline YAML/JSON
    path = Path(value)
    try:
        if path.exists():
            return value
    except OSError:  # not a path this system can hold (too long): the parser reports it
        return value
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = CONFIGS / name
    if packaged.is_file() and path.parent in (Path("."), Path("configs")):
        return str(packaged)
    return value


def resolve_configs(args: list[str]) -> list[str]:
    """``args`` with each ``--config X`` / ``--config=X`` resolved by ``packaged_config``."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = packaged_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + packaged_config(arg[len("--config="):])
    return out


def main(args: list[str] | None = None, trainer_defaults: dict | None = None) -> HizooCLI:
    """``args`` as on the command line (None: ``sys.argv``; none at all: the quickstart config); ``trainer_defaults``
    as LightningCLI's (e.g. extra callbacks)."""
    if args is None:
        args = sys.argv[1:] or ["fit", "--config", str(QUICKSTART)]
    return HizooCLI(HizooLightningModule, HizooDataModule, args=resolve_configs(args),
                    trainer_defaults=trainer_defaults, parser_class=HizooArgumentParser)


def cli() -> None:
    """The command line program: ``python train.py``, ``python -m hizoo.train`` and ``hizoo-train``."""
    try:
        main()
    except RunFolderInUse as err:  # a usage error: the message says what to do, a traceback would only hide it
        sys.exit(f"hizoo: {err}")


if __name__ == "__main__":
    cli()
