"""Expert parallelism in training (models/expert_parallel.py, HizooLightningModule(expert_parallel_size=N)):
2 processes over gloo compare EP=2 with EP=1 for every router (expert_parallel_worker.py) and under Lightning's
DDP strategy, across checkpoints and export (lightning_expert_parallel_worker.py); plus the errors."""

from pathlib import Path

import lightning as L
import pytest
import torch.distributed as dist

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.expert_parallel import ExpertParallel
from hizoo.models.lightning import HizooLightningModule

HERE = Path(__file__).parent
TINY = dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


@pytest.fixture(scope="module")
def worker_outputs(tmp_path_factory, launch_ranks) -> list[str]:
    """One pair of processes runs every check of expert_parallel_worker.py. ~10-15 s on a quiet 2-core machine,
    most of it two interpreters importing torch, Lightning and transformers."""
    return launch_ranks(HERE / "expert_parallel_worker.py", str(tmp_path_factory.mktemp("ep")))


@pytest.mark.slow  # two worker processes train with EP=2 and EP=1
@pytest.mark.parametrize("router", ["topk", "topk_global_balance", "group_limited", "himoe", "himoe_recompute"])
def test_ep2_equals_ep1_for_every_router(worker_outputs, router):
    """Same global batch, one batch per rank under DDP: losses, every gradient (experts gathered), the clipped
    total norm, router buffers and parameters after an AdamW step, and the checkpointed optimizer state agree
    between EP=1 and EP=2 (topk with local and with global-batch balance, group_limited, himoe + mHC, himoe with
    gradient checkpointing); where the forward has no collective they also equal the single-process mean of the
    two batches' losses."""
    for out in worker_outputs:
        assert f"ok {router}\n" in out, out[-3000:]


@pytest.mark.slow  # two worker processes train with EP=2 and EP=1
def test_lightning_ep2_equals_ep1(worker_outputs):
    """HizooLightningModule under Lightning's DDP on 2 CPU processes, with gradient accumulation, clipping and the
    diagnostics callback: EP=2 and EP=1 log the same losses."""
    assert all("ok ep2_equals_ep1\n" in out for out in worker_outputs)


@pytest.mark.slow  # two worker processes train with EP=2 and EP=1
def test_lightning_checkpoints_resume_across_sizes(worker_outputs):
    """A checkpoint written with EP=2 resumes with EP=1 and one written with EP=1 resumes with EP=2, and both
    continue with the same losses (weights and AdamW moments moved across the sizes)."""
    assert all("ok resume_across_sizes\n" in out for out in worker_outputs)


@pytest.mark.slow  # two worker processes train with EP=2 and EP=1
def test_export_after_expert_parallel_loads_and_matches(worker_outputs):
    """save_pretrained of the state gathered to rank 0 loads with from_pretrained and gives the logits of the
    last checkpoint (exactly) and of the EP=1 run (fp32 tolerance)."""
    assert "ok export\n" in worker_outputs[0]


def test_bad_expert_parallel_size_is_rejected():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=f"expert_parallel_size={bad!r} must be an integer >= 1"):
            HizooLightningModule(model_config=TINY, expert_parallel_size=bad)


def test_expert_parallel_applies_under_a_ddp_trainer_only():
    """Without a Trainer (e.g. load_from_checkpoint for analysis) the module holds every expert; under a Trainer
    whose strategy is not DDP it says which strategies run expert parallelism."""
    module = HizooLightningModule(model_config={**TINY, "ffn": "moe", "num_experts": 4, "num_experts_per_tok": 2},
                                  expert_parallel_size=2)
    module.configure_model()
    assert module.expert_parallel is None and module.model.model.layers[0].ffn.experts.w13.shape[0] == 4
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    with pytest.raises(ValueError, match="expert_parallel_size=2 runs under Lightning's DDP.*SingleDeviceStrategy"):
        module.configure_model()


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_expert_parallel_checks_the_world_and_the_model(one_process_group):
    moe = HizooForCausalLM(HizooConfig(**TINY, ffn="moe", num_experts=4, num_experts_per_tok=2))
    with pytest.raises(ValueError, match=r"expert_parallel_size=2 must divide the number of processes \(1\)"):
        ExpertParallel(moe, 2)
    with pytest.raises(ValueError, match="needs a Mixture-of-Experts model"):
        ExpertParallel(HizooForCausalLM(HizooConfig(**TINY)), 1)
    ep = ExpertParallel(moe, 1)  # one rank holds every expert: the identity layout
    assert [name for name, _ in ep.named_parameters()] == [
        f"model.layers.{i}.ffn.experts.{w}" for i in range(2) for w in ("w13", "w2")]
    assert ep.mesh.mesh_dim_names == ("expert_data_parallel", "expert_parallel")


def test_expert_parallel_needs_a_process_group():
    moe = HizooForCausalLM(HizooConfig(**TINY, ffn="moe", num_experts=4, num_experts_per_tok=2))
    with pytest.raises(RuntimeError, match="expert_parallel_size=2 needs several processes"):
        ExpertParallel(moe, 2)
