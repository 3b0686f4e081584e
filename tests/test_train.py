"""train.py end to end on configs/tiny.yaml: the loss goes down, the exported directory loads with the Auto
classes in a fresh interpreter and generates, checkpoints load, and bad input fails with a clear message."""

import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "tiny.yaml")

sys.path.insert(0, str(REPO))
import train  # noqa: E402  (train.py is a script at the repository root)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    args = ["fit", "--config", TINY, "--trainer.default_root_dir", str(workdir / "tiny"),
            "--data.cache_dir", str(workdir / "cache")]
    train.main(args)
    return workdir / "tiny"


@pytest.mark.slow  # a training run of train.py (the tiny config; DDP, resume or a fresh interpreter)
def test_tiny_run_learns_and_exports(tiny_run):
    version = tiny_run  # the run folder holds the logs, checkpoints/ and hf_model/
    export = version / "hf_model"
    assert (export / "model.safetensors").is_file() and (export / "tokenizer.json").is_file()
    assert list(version.glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(version))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) >= 5
    assert losses[-1] < losses[0] - 0.5, losses
    tags = events.Tags()
    assert "experts/layer0/cv" in tags["scalars"] and "experts/load_heatmap" in tags["images"]  # diagnostics callback
    assert {"lr-AdamW/pg1", "lr-AdamW/pg2"} <= set(tags["scalars"])  # the config's LearningRateMonitor
    val_ce = events.Scalars("val/ce")[-1].value
    assert val_ce < math.log(384) - 0.5  # better than uniform over the vocabulary


_FRESH = """
import sys, torch
import hizoo
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok("def main(", return_tensors="pt")["input_ids"]
out = model.generate(ids, max_new_tokens=8, do_sample=False)
assert out.shape[1] == ids.shape[1] + 8
print("generated:", repr(tok.decode(out[0])))
"""


@pytest.mark.slow  # a training run of train.py (the tiny config; DDP, resume or a fresh interpreter)
def test_export_loads_in_fresh_interpreter_and_generates(tiny_run):
    export = tiny_run / "hf_model"
    result = subprocess.run([sys.executable, "-c", _FRESH, str(export)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generated:" in result.stdout


@pytest.mark.slow  # a training run of train.py (the tiny config; DDP, resume or a fresh interpreter)
def test_export_has_consistent_special_tokens_left_padding_and_a_card(tiny_run):
    """The end-of-run export: tokenizer ids in config and generation config (so generate stops at eos), a tokenizer
    that pads on the left with the model's context length, auto_map and code, and a card with the run's numbers."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoTokenizer

    version = tiny_run  # the run folder
    export = version / "hf_model"
    config = json.loads((export / "config.json").read_text())
    generation = json.loads((export / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(export)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for name in ("bos", "eos", "pad"):
        assert config[f"{name}_token_id"] == generation[f"{name}_token_id"] == getattr(tokenizer, f"{name}_token_id") == eos
    assert tokenizer.padding_side == "left" and tokenizer.model_max_length == config["max_position_embeddings"]
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert (export / "modeling_hizoo.py").is_file() and (export / "configuration_hizoo.py").is_file()
    events = EventAccumulator(str(version))
    events.Reload()
    ppl = events.Scalars("val/ppl")[-1].value
    card = (export / "README.md").read_text()
    assert "| training tokens | 15,360 (15.4K) |" in card  # 30 steps x batch 8 x 64 tokens
    assert f"| validation perplexity | {ppl:.4g} |" in card
    assert f"| context length | {config['max_position_embeddings']} tokens (`max_position_embeddings`); trained on " \
           "sequences of 64 |" in card
    assert f'from_pretrained("{export}", trust_remote_code=True)' in card


@pytest.mark.slow  # a training run of train.py (the tiny config; DDP, resume or a fresh interpreter)
def test_export_loads_and_generates_without_hizoo(tiny_run, tmp_path):
    """tests/models/fresh_env_check.py: the export loads in an interpreter that cannot import hizoo, and batched
    left-padded greedy generation from its tokenizer equals the package's."""
    import json

    from transformers import AutoTokenizer

    from hizoo import HizooForCausalLM

    export = tiny_run / "hf_model"
    model, tokenizer = HizooForCausalLM.from_pretrained(export).eval(), AutoTokenizer.from_pretrained(export)
    prompts = ["def main(", "import os\nprint(os.path"]
    with torch.no_grad():
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        generated = model.generate(**batch, max_new_tokens=8, do_sample=False)
        torch.save({"ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                    "logits": model(**batch).logits, "batch": generated},
                   tmp_path / "expected.pt")
    entry = {"name": "tiny_run", "path": str(export), "expected": str(tmp_path / "expected.pt"), "tokenizer": True,
             "prompts": prompts, "max_new_tokens": 8}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"exports": [entry], "forbidden_roots": [str(REPO)]}))
    env = {"HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-I", str(REPO / "tests" / "models" / "fresh_env_check.py"),
                             str(manifest)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0 and "ok tiny_run" in result.stdout, result.stdout + result.stderr[-3000:]


@pytest.mark.slow  # a training run of train.py (the tiny config; DDP, resume or a fresh interpreter)
def test_checkpoint_loads_into_the_same_model(tiny_run):
    from hizoo.models.lightning import load_model_from_checkpoint

    last = next(tiny_run.rglob("last.ckpt"))
    from_ckpt = load_model_from_checkpoint(last).eval()
    exported = load_model_from_checkpoint(tiny_run / "hf_model").eval()
    ids = torch.randint(0, 384, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(from_ckpt(ids).logits, exported(ids).logits)


def test_bad_checkpoints_raise(tmp_path):
    from hizoo.models.lightning import load_model_from_checkpoint

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_from_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_model_from_checkpoint(tmp_path / "corrupt.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="hizoo_config"):
        load_model_from_checkpoint(tmp_path / "foreign.ckpt")


@pytest.mark.slow  # a training run of train.py (the tiny config; DDP, resume or a fresh interpreter)
def test_unknown_config_key_is_rejected(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "fit", "--config", TINY, "--model.learning_rat", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    assert "learning_rat" in result.stderr


def test_bad_model_field_is_rejected(tmp_path):
    args = ["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path), "--data.cache_dir",
            str(tmp_path / "cache"), "--model.model_config.num_experts_per_tok", "9"]
    with pytest.raises(ValueError, match="num_experts_per_tok=9"):
        train.main(args)


def _losses(version_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(version_dir))
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


class _CrashAt(L.Callback):
    """Interrupts training after optimizer step ``step`` (Lightning shuts down as on Ctrl-C)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow  # a training run of train.py (the tiny config; DDP, resume or a fresh interpreter)
def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    """30 steps straight vs a run interrupted at step 12, resumed with --ckpt_path last (step 10): same losses,
    and the run folder's TensorBoard curve shows every step once."""
    common = ["--config", TINY, "--data.cache_dir", str(tmp_path / "cache"), "--trainer.log_every_n_steps", "2",
              "--trainer.limit_val_batches", "0", "--model.model_config.router", "himoe",
              "--model.model_config.n_groups", "2"]
    straight = tmp_path / "straight"
    train.main(["fit", *common, "--trainer.default_root_dir", str(straight)])
    resumed = tmp_path / "resumed"
    with pytest.raises(SystemExit):  # Lightning exits after an interrupt
        train.main(["fit", *common, "--trainer.default_root_dir", str(resumed)],
                   trainer_defaults={"callbacks": [_CrashAt(12)]})
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    train.main(["fit", *common, "--trainer.default_root_dir", str(resumed), "--ckpt_path", "last"])
    full = _losses(straight)
    merged = _losses(resumed)  # the interrupted start's steps 10-11 are hidden by the resumed start
    assert len(full) == 15 and len(merged) == 15
    torch.testing.assert_close(torch.tensor(merged), torch.tensor(full), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config_path", sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "base.yaml"),
                         ids=lambda p: p.stem)  # base.yaml: the trainer settings the others extend, no run itself
def test_every_config_parses_and_builds_a_valid_model_config(config_path, capsys):
    import yaml

    from hizoo import HizooConfig

    with pytest.raises(SystemExit) as done:
        train.main(["fit", "--config", str(config_path), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model_config = HizooConfig(**printed["model"]["model_config"])  # validates every field
    assert model_config.num_hidden_layers >= 2
    callbacks = [c["class_path"] for c in printed["trainer"]["callbacks"]]
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in callbacks  # every training config logs the lr


@pytest.mark.slow  # a training run of train.py (the tiny config; DDP, resume or a fresh interpreter)
def test_ddp_with_two_cpu_processes(tmp_path):
    """configs/ddp_cpu.yaml (strategy ddp, 2 gloo processes, global-batch balance) trains, exits cleanly and exports."""
    args = ["fit", "--config", str(REPO / "configs" / "ddp_cpu.yaml"), "--trainer.max_steps", "4",
            "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar",
            "false", "--data.max_files", "30", "--data.vocab_size", "384", "--data.seq_len", "64",
            "--data.batch_size", "4", "--model.model_config.hidden_size", "64",
            "--model.model_config.num_hidden_layers", "2", "--data.cache_dir", str(tmp_path / "cache"),
            "--trainer.default_root_dir", str(tmp_path / "ddp_cpu")]
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout
    assert (tmp_path / "ddp_cpu" / "hf_model" / "model.safetensors").is_file()


def test_non_finite_loss_stops_with_the_step_number():
    from hizoo.models.lightning import HizooLightningModule

    module = HizooLightningModule(model_config=dict(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64))
    module.configure_model()
    with torch.no_grad():
        module.model.lm_head.weight.fill_(float("nan"))
    ids = torch.randint(0, 50, (2, 8))
    with pytest.raises(FloatingPointError, match="non-finite training loss nan at step 0"):
        module.training_step({"input_ids": ids}, 0)


def test_flops_per_token_counts_active_experts_only():
    from hizoo import HizooConfig

    base = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn="moe",
                num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, max_position_embeddings=16)
    few, many = HizooConfig(**base), HizooConfig(**{**base, "num_experts": 64})
    # 56 more experts add only router FLOPs: 6 · 2 layers · 64 · 56
    assert many.flops_per_token(16) - few.flops_per_token(16) == 6 * 2 * 64 * 56
    more_active = HizooConfig(**{**base, "num_experts_per_tok": 4})
    assert more_active.flops_per_token(16) - few.flops_per_token(16) == 6 * 2 * 3 * 64 * 32 * 2
