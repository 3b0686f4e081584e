"""configs/ep_cpu.yaml through train.py: the documented command (Lightning starts the second process itself)
trains with the experts split over two gloo processes and exports a model that holds every expert."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a 2-process expert-parallel training run

def test_ep_cpu_config_trains_and_exports_every_expert(tmp_path):
    """~20-30 s: Lightning launches a second interpreter and both tokenize a small corpus slice."""
    args = ["fit", "--config", str(REPO / "configs" / "ep_cpu.yaml"), "--trainer.max_steps", "3",
            "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar",
            "false", "--data.max_files", "30", "--data.vocab_size", "384", "--data.seq_len", "64",
            "--data.batch_size", "4", "--model.model_config.hidden_size", "64",
            "--model.model_config.num_hidden_layers", "2", "--data.cache_dir", str(tmp_path / "cache"),
            "--trainer.default_root_dir", str(tmp_path / "ep_cpu")]
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout
    export = tmp_path / "ep_cpu" / "hf_model"
    from hizoo import HizooForCausalLM
    from hizoo.models.lightning import HizooLightningModule, load_model_from_checkpoint

    model = HizooForCausalLM.from_pretrained(export).eval()
    assert model.config.num_experts == 16 and model.model.layers[0].ffn.experts.w13.shape[0] == 16
    assert "expert_parallel" not in model.config.to_dict()  # how it was trained is not part of the model
    total = model.config.num_parameters()  # the card was written from rank 0's shard: it counts every expert
    assert total == sum(p.numel() for p in model.parameters())
    assert f"| parameters | {total:,} " in (export / "README.md").read_text()
    assert (export / "modeling_hizoo.py").is_file()
    last = next(tmp_path.rglob("last.ckpt"))
    checkpoint = load_model_from_checkpoint(last).eval()
    module = HizooLightningModule.load_from_checkpoint(last).eval()  # every expert, no process group needed
    assert module.hparams.expert_parallel_size == 2 and module.expert_parallel is None
    ids = torch.randint(0, 384, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, checkpoint(ids).logits, atol=0, rtol=0)
        torch.testing.assert_close(module.model(ids).logits, checkpoint(ids).logits, atol=0, rtol=0)
