"""hizoo's main job: pretraining with Lightning.

    python train.py                                   # configs/quickstart.yaml
    python train.py fit --config configs/X.yaml       # any config; every LightningCLI override works
    python train.py fit --config configs/X.yaml --ckpt_path last    # resume from the last checkpoint

At the end of ``fit`` the model is exported as a Hugging Face directory (config, safetensors, tokenizer, modeling
code, model card) next to the TensorBoard logs, loadable with ``AutoModelForCausalLM`` after ``import hizoo``, or
with ``trust_remote_code=True`` where hizoo is not installed.
"""

import re
import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from hizoo.data import HizooDataModule
from hizoo.models.configuration import closest_name
from hizoo.models.export import export_pretrained
from hizoo.models.lightning import HizooLightningModule
from hizoo.models.model_card import ModelCardInfo

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


def export(cli: LightningCLI, state_dict: dict | None = None) -> Path:
    """Save the trained model as a self-contained Hugging Face directory next to the logs (models/export.py): weights
    (``state_dict``: the full weights when expert parallelism left this rank a shard), config with ``auto_map`` and the
    modeling code (loads without hizoo), special tokens from the tokenizer in config and generation config, the
    tokenizer (left padding, the model's context length), and a model card with the training tokens and the
    validation perplexity."""
    trainer, data = cli.trainer, cli.datamodule
    out = Path(trainer.log_dir or trainer.default_root_dir) / "hf_model"
    batch_size, seq_len = getattr(data, "batch_size", None), getattr(data, "seq_len", None)
    tokens = None
    if batch_size is not None and seq_len is not None:
        # each optimizer step: accumulate_grad_batches micro-batches per process of batch_size full sequences
        # (the training loader drops the last incomplete batch)
        tokens = trainer.global_step * trainer.accumulate_grad_batches * trainer.world_size * batch_size * seq_len
    ppl = trainer.callback_metrics.get("val/ppl")
    source = getattr(data, "source", None)
    card = ModelCardInfo(
        path=str(out), training_tokens=tokens, training_sequence_length=seq_len,
        validation_perplexity=float(ppl) if ppl is not None else None,
        training_data=f"`--data.source {source}`" if source is not None else None,
        source=f"trained from scratch with hizoo's `train.py` for {trainer.global_step} optimizer steps")
    export_pretrained(cli.model.model, out, tokenizer=data.tokenizer, card=card, state_dict=state_dict)
    return out


def main(args: list[str] | None = None, trainer_defaults: dict | None = None) -> None:
    """``args`` as on the command line; ``trainer_defaults`` as LightningCLI's (e.g. extra callbacks)."""
    args = sys.argv[1:] if args is None else args
    if not args:
        args = ["fit", "--config", str(QUICKSTART)]
    cli = LightningCLI(HizooLightningModule, HizooDataModule, args=args, trainer_defaults=trainer_defaults,
                       save_config_kwargs={"overwrite": True}, parser_class=HizooArgumentParser)
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
