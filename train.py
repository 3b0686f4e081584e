"""hizoo's main job: pretraining with Lightning.

    python train.py                                   # configs/quickstart.yaml
    python train.py fit --config configs/X.yaml       # any config; every LightningCLI override works
    python train.py fit --config configs/X.yaml --ckpt_path last    # continue the run after a stop or crash
    python train.py test --config configs/X.yaml --ckpt_path last   # test/loss, test/ppl (with data.test_fraction)
    python train.py predict --config configs/X.yaml --ckpt_path last --data.predict_prompts prompts.txt

Installed from a wheel (no checkout), ``python -m hizoo.train`` and the ``hizoo-train`` command are the
same program: the configs ship inside the package, and ``--config`` names one by its preset name (``--config
himoe``) or by its checkout path (``--config configs/himoe.yaml``) when no such file exists where you run.

Every config in ``configs/`` extends ``configs/base.yaml`` (the shared trainer settings: callbacks, precision,
logging) with its first key, ``config: base.yaml``; train.py loads the base first (``base_configs``), and
whatever the config sets overrides it.

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


def base_configs(value: str, _seen: tuple[Path, ...] = ()) -> list[str]:
    """The config files a config file extends, first first: the files named by its top-level ``config`` key
    (jsonargparse's include syntax, relative to the file's folder; a base may name its own base), then none
    for anything that is not a YAML file with that key (inline YAML, a missing file: the parser reports it).

    LightningCLI's subcommands ignore a ``config`` key inside a config file (jsonargparse 4.x drops it), so
    train.py passes every base as its own ``--config`` before the file: LightningCLI merges successive
    ``--config`` files key by key, so the file's ``trainer.max_steps`` overrides the base's and leaves the
    base's other trainer settings in place (a list, such as ``trainer.callbacks``, is replaced whole)."""
    path = Path(value)
    try:
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            return []
    except OSError:  # not a path this system can hold (inline YAML): nothing to include
        return []
    import yaml

    content = yaml.safe_load(path.read_text())
    names = content.get("config") if isinstance(content, dict) else None
    if names is None:
        return []
    out = []
    for name in names if isinstance(names, list) else [names]:
        base = (path.parent / str(name)).resolve()
        if not base.is_file():
            raise FileNotFoundError(f"{path}: config: {name} names no file ({base}); a config's `config` key is the "
                                    "config file it extends, relative to its own folder")
        if base in _seen or base == path.resolve():
            raise ValueError(f"{path}: config: {name} includes itself (through {', '.join(map(str, _seen))})")
        out += [*base_configs(str(base), (*_seen, path.resolve())), str(base)]
    return out


def resolve_configs(args: list[str]) -> list[str]:
    """``args`` with each ``--config X`` / ``--config=X`` resolved by ``packaged_config`` and preceded by the
    ``--config`` of every file X extends (``base_configs``: configs/base.yaml for hizoo's configs)."""
    out = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            value = packaged_config(args[i + 1])
            given = ["--config", value]
            i += 2
        elif arg.startswith("--config="):
            value = packaged_config(arg[len("--config="):])
            given = ["--config=" + value]
            i += 1
        else:
            out.append(arg)
            i += 1
            continue
        for base in base_configs(value):
            out += ["--config", base]
        out += given
    return out


def main(args: list[str] | None = None, trainer_defaults: dict | None = None, export: bool = True) -> HizooCLI:
    """``args`` as on the command line (None: ``sys.argv``; none at all: the quickstart config); ``trainer_defaults``
    as LightningCLI's (e.g. extra callbacks); ``export=False``: no Hugging Face export after ``fit`` (the study's
    runs, see ``HizooCLI``)."""
    if args is None:
        args = sys.argv[1:] or ["fit", "--config", str(QUICKSTART)]
    return HizooCLI(HizooLightningModule, HizooDataModule, args=resolve_configs(args),
                    trainer_defaults=trainer_defaults, parser_class=HizooArgumentParser, export=export)


def cli() -> None:
    """The command line program: ``python train.py``, ``python -m hizoo.train`` and ``hizoo-train``."""
    try:
        main()
    except RunFolderInUse as err:  # a usage error: the message says what to do, a traceback would only hide it
        sys.exit(f"hizoo: {err}")


if __name__ == "__main__":
    cli()
