"""Training-batch expert metrics: the routers' detached counts over an optimizer step (all micro-batches, all
ranks) give the same CV/MaxVio/entropy/group/drop numbers as an independent recount of the same batches' routing
(eval forwards, torch.bincount, the formulas written out here with numpy)."""

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from hizoo.analysis.callback import DiagnosticsCallback
from hizoo.models.moe import step_expert_metrics, update_router_states

from .train_batch_metrics_cases import CONFIG, batches, tiny_model

E, G = CONFIG["num_experts"], CONFIG["n_groups"]


@torch.no_grad()
def recount(model, micro_batches) -> dict[int, tuple[np.ndarray, int]]:
    """{layer: (pairs per expert [E], dropped pairs)} of eval forwards of the micro-batches, one by one (the
    capacity limit applies per forward, as in training; eval uses the training capacity factor here)."""
    was = model.training
    model.eval()
    out: dict[int, tuple[np.ndarray, int]] = {}
    for ids in micro_batches:
        for i, r in enumerate(model(ids, use_cache=False).routing):
            counts = torch.bincount(r.expert_idx.flatten(), minlength=E).numpy()
            dropped = int(r.dropped.sum())
            c, d = out.get(i, (np.zeros(E, dtype=np.int64), 0))
            out[i] = (c + counts, d + dropped)
    model.train(was)
    return out


def expected(counts: np.ndarray, dropped: int) -> dict[str, float]:
    load = counts / counts.sum()
    groups = load.reshape(G, -1)
    group_load = groups.sum(-1)
    p = load[load > 0]
    return {"cv": load.std() / load.mean(), "max_vio": (load.max() - load.mean()) / load.mean(),
            "entropy_normalized": float(-(p * np.log(p)).sum() / math.log(E)), "drop_rate": dropped / counts.sum(),
            "group_cv": group_load.std() / group_load.mean(), "max_group_share": group_load.max(),
            "within_group_collapse": float(np.nanmean(groups.max(-1) / group_load))}


def test_step_metrics_equal_a_recount_of_the_accumulated_micro_batches():
    model = tiny_model().train()
    micro = batches()
    for ids in micro:  # one optimizer step of 4 accumulated micro-batches
        model(ids, labels=ids, use_cache=False).loss.backward()
    assert step_expert_metrics(model) == {}  # nothing before the step's reduction
    update_router_states(model)
    got = step_expert_metrics(model)
    reference = recount(model, micro)
    assert sorted(got) == [0, 1]
    for i, (counts, dropped) in reference.items():
        assert dropped > 0  # the capacity limit is exercised
        np.testing.assert_allclose(got[i].load, counts / counts.sum())
        for key, value in expected(counts, dropped).items():
            assert getattr(got[i], key) == pytest.approx(value, rel=1e-9), key
    # the next step starts from zero: one micro-batch alone
    model(micro[0], labels=micro[0], use_cache=False)
    update_router_states(model)
    counts, dropped = recount(model, micro[:1])[1]
    assert step_expert_metrics(model)[1].max_vio == pytest.approx(expected(counts, dropped)["max_vio"], rel=1e-9)


def test_eval_forwards_and_checkpoint_replays_are_not_counted():
    model = tiny_model()
    ids = batches(1)[0]
    model.eval()
    model(ids, use_cache=False)
    assert all(layer.ffn.router.metric_counts().sum() == 0 for layer in model.model.layers)
    model.train()
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model(ids, labels=ids, use_cache=False).loss.backward()  # the backward replays each block's forward
    for layer in model.model.layers:
        assert layer.ffn.router.metric_counts()[:E].sum() == ids.numel() * CONFIG["num_experts_per_tok"]


class _Module(pl.LightningModule):
    """lr 0: the weights stay those of the recount; update_router_states once per optimizer step."""

    def __init__(self):
        super().__init__()
        self.model = tiny_model()

    def training_step(self, batch, batch_idx):
        return self.model(batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        update_router_states(self.model)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_callback_logs_the_training_batches_under_gradient_accumulation(tmp_path):
    micro = batches(n=4)  # 2 optimizer steps of 2 micro-batches
    data = [{"input_ids": row} for ids in micro for row in ids]
    module = _Module()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", accumulate_grad_batches=2, logger=TensorBoardLogger(tmp_path),
                         callbacks=[DiagnosticsCallback(scalars_every_n_steps=1, figures_every_n_steps=100)],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=2))
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert not any(t.startswith("experts/") for t in tags)  # no figure step: no extra forward (no streams either)
    steps = [recount(module.model, micro[:2]), recount(module.model, micro[2:])]
    for i in (0, 1):
        for key in ("cv", "max_vio", "entropy_normalized", "drop_rate", "group_cv", "max_group_share",
                    "within_group_collapse"):
            logged = acc.Scalars(f"train/experts/layer{i}/{key}")
            assert [e.step for e in logged] == [1, 2]
            for event, counts in zip(logged, steps):
                assert event.value == pytest.approx(expected(*counts[i])[key], rel=1e-6, abs=1e-7), key
        total = steps[0][i][0] + steps[1][i][0]  # accumulated over both steps
        accumulated = acc.Scalars(f"train/experts/layer{i}/max_vio_accumulated")
        assert accumulated[-1].value == pytest.approx(expected(total, 0)["max_vio"], rel=1e-6)
    mean = acc.Scalars("train/experts/mean_max_vio")[0].value
    assert mean == pytest.approx(np.mean([expected(*steps[0][i])["max_vio"] for i in (0, 1)]), rel=1e-6)


@pytest.mark.slow  # two worker processes (≈10 s, most of it importing torch and transformers twice)
def test_two_ranks_equal_one_process_over_the_union_of_their_batches(tmp_path, launch_ranks):
    out = tmp_path / "counts.pt"
    launch_ranks(Path(__file__).parent / "train_batch_metrics_worker.py", str(out))
    reduced = torch.load(out, weights_only=True)
    model = tiny_model().train()
    for ids in batches():
        model(ids, labels=ids, use_cache=False).loss.backward()
    update_router_states(model)
    for i, layer in enumerate(model.model.layers):
        torch.testing.assert_close(reduced[i], layer.ffn.router.step_counts, rtol=0, atol=0)
    assert reduced[0][:E].sum() == 4 * 2 * 8 * 2  # every pair of both ranks' micro-batches


@pytest.mark.slow  # 5-30 s: dynamo and AOTAutograd trace the forward and the backward
def test_compiled_training_forward_counts_as_the_eager_one():
    eager = tiny_model(num_hidden_layers=1).train()
    compiled_model = tiny_model(num_hidden_layers=1).train()
    compiled = torch.compile(compiled_model, backend="aot_eager")
    for ids in batches(n=2):
        eager(ids, labels=ids, use_cache=False).loss.backward()
        compiled(ids, labels=ids, use_cache=False).loss.backward()
    for model in (eager, compiled_model):
        update_router_states(model)
    want, got = eager.model.layers[0].ffn.router.step_counts, compiled_model.model.layers[0].ffn.router.step_counts
    assert want[:E].sum() == 2 * 2 * 8 * 2
    torch.testing.assert_close(got, want, rtol=0, atol=0)
