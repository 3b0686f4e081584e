"""hizoo's main job: pretraining with Lightning.

    python train.py                                   # configs/quickstart.yaml
    python train.py fit --config configs/X.yaml       # any config; every LightningCLI override works
    python train.py fit --config configs/X.yaml --ckpt_path last    # continue the run after a stop or crash

A run is one folder, ``trainer.default_root_dir`` (``runs/<config>``): TensorBoard logs, ``config.yaml``,
``checkpoints/last.ckpt`` and, at the end of ``fit``, the model exported as a Hugging Face directory
``hf_model/`` (config, safetensors, tokenizer), loadable with ``AutoModelForCausalLM`` after ``import hizoo``.
SIGTERM/SIGUSR1 save a checkpoint and exit with status 128 + signal (see ``hizoo.training.cli``).
"""

import sys
from pathlib import Path

from hizoo.data import HizooDataModule
from hizoo.models.lightning import HizooLightningModule
from hizoo.training.cli import HizooCLI
from hizoo.training.run_folder import RunFolderInUse

QUICKSTART = Path(__file__).resolve().parent / "configs" / "quickstart.yaml"


def main(args: list[str] | None = None, trainer_defaults: dict | None = None) -> HizooCLI:
    """``args`` as on the command line; ``trainer_defaults`` as LightningCLI's (e.g. extra callbacks)."""
    if args is None and not sys.argv[1:]:
        args = ["fit", "--config", str(QUICKSTART)]
    return HizooCLI(HizooLightningModule, HizooDataModule, args=args, trainer_defaults=trainer_defaults)


if __name__ == "__main__":
    try:
        main()
    except RunFolderInUse as err:  # a usage error: the message says what to do, a traceback would only hide it
        sys.exit(f"hizoo: {err}")
