import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.analysis.callback import DiagnosticsCallback
from hizoo.models.moe import update_router_states


class _Tokens(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(0, 48, (8,), generator=g), "domain_ids": torch.full((8,), i % 2)}


class _Data(pl.LightningDataModule):
    domain_names = ["lib", "docs"]

    def train_dataloader(self):
        return DataLoader(_Tokens(), batch_size=2)


class _Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = HizooForCausalLM(HizooConfig(
            vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            ffn="moe", num_experts=4, num_experts_per_tok=2, n_groups=2, router="himoe", moe_intermediate_size=8,
            experts_backend="eager", residual="mhc", n_streams=2))

    def training_step(self, batch, batch_idx):
        return self.model(batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        update_router_states(self.model)  # as HizooLightningModule: the step's routing counts, reduced

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_callback_writes_scalars_figures_and_histograms(tmp_path):
    torch.manual_seed(0)
    module = _Module()
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="tb"),
                         callbacks=[DiagnosticsCallback(scalars_every_n_steps=2, figures_every_n_steps=4)],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=_Data())
    assert module.model.training  # mode restored after the diagnostics forward
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("experts/layer0/max_vio", "experts/layer1/cv", "experts/layer0/group_cv",
                "train/experts/layer0/max_vio", "train/experts/layer1/entropy_normalized",
                "train/experts/layer0/group_cv", "train/experts/layer0/max_vio_accumulated",
                "train/experts/mean_cv", "experts/domain/lib/specialization",
                "streams/layer0/dominant_share", "streams/layer1/effective_streams",
                "streams/layer0/attn/mix_identity_distance", "streams/layer0/attn/mix_identity_distance_per_token",
                "streams/logit_spread/fraction_above_30", "streams/ablation/stream0"):
        assert tag in tags["scalars"], tag
    # mHC: the axis Sinkhorn leaves inexact has its Amax gain logged, the exact one is not (it is 1)
    assert ("streams/amax_forward" in tags["scalars"]) != ("streams/amax_backward" in tags["scalars"])
    # training batches every scalars step; the extra forward's expert metrics on figure steps only, its stream
    # metrics (which need the activations) every scalars step
    assert [e.step for e in acc.Scalars("train/experts/layer0/max_vio")] == [2, 4]
    assert [e.step for e in acc.Scalars("experts/layer0/max_vio")] == [4]
    assert [e.step for e in acc.Scalars("streams/layer0/dominant_share")] == [2, 4]
    assert [e.step for e in acc.Scalars("streams/ablation/stream0")] == [4]  # figure steps only
    for tag in ("experts/load_heatmap", "experts/group_loads", "experts/domain_usage", "streams/norm_shares",
                "streams/mix", "streams/logit_spread", "streams/mix_sums", "streams/amax_depth"):
        assert tag in tags["images"], tag
    assert "experts/layer0/load" in tags["histograms"]


def test_callback_rejects_bad_intervals():
    with pytest.raises(ValueError, match="scalars_every_n_steps"):
        DiagnosticsCallback(scalars_every_n_steps=0)
