"""hizoo's main job: pretraining with Lightning.

    python train.py                                   # configs/quickstart.yaml
    python train.py fit --config configs/X.yaml       # any config; every LightningCLI override works
    python train.py fit --config configs/X.yaml --ckpt_path last    # resume from the last checkpoint

At the end of ``fit`` the model is exported as a Hugging Face directory (config, safetensors, tokenizer)
next to the TensorBoard logs, loadable with ``AutoModelForCausalLM`` after ``import hizoo``.
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from hizoo.data import HizooDataModule
from hizoo.models.lightning import HizooLightningModule

QUICKSTART = Path(__file__).resolve().parent / "configs" / "quickstart.yaml"


def export(cli: LightningCLI, state_dict: dict | None = None) -> Path:
    log_dir = Path(cli.trainer.log_dir or cli.trainer.default_root_dir)
    out = log_dir / "hf_model"
    cli.model.model.save_pretrained(out, state_dict=state_dict)
    cli.datamodule.tokenizer.save_pretrained(out)
    return out


def main(args: list[str] | None = None, trainer_defaults: dict | None = None) -> None:
    """``args`` as on the command line; ``trainer_defaults`` as LightningCLI's (e.g. extra callbacks)."""
    args = sys.argv[1:] if args is None else args
    if not args:
        args = ["fit", "--config", str(QUICKSTART)]
    cli = LightningCLI(HizooLightningModule, HizooDataModule, args=args, trainer_defaults=trainer_defaults,
                       save_config_kwargs={"overwrite": True})
    state_dict = None
    if cli.subcommand == "fit" and not cli.trainer.interrupted:
        state_dict = cli.model.model_state_for_export()  # every rank: expert parallelism gathers to rank 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()  # a live gloo/NCCL group aborts the interpreter at exit
    if cli.subcommand != "fit" or cli.trainer.interrupted or not cli.trainer.is_global_zero:
        return
    out = export(cli, state_dict)
    ppl = cli.trainer.callback_metrics.get("val/ppl")
    print(f"\nTensorBoard logs: {cli.trainer.log_dir}   (tensorboard --logdir {Path(cli.trainer.log_dir).parent})")
    print(f"exported Hugging Face model: {out}")
    if ppl is not None:
        print(f"validation perplexity: {float(ppl):.2f}")


if __name__ == "__main__":
    main()
