"""Run by test_expert_parallel.py as 2 processes over gloo (torchrun-style environment: RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Argument: a scratch directory. Prints ``ok NAME`` per check and exits
non-zero at the first mismatch.

1. Models under DDP, no Lightning: each rank trains on its own batch of the same global batch, once with the
   experts replicated (EP=1) and once sharded (EP=2), for every router; the losses, gradients, clipped
   gradients, router states, one AdamW step and the checkpointed optimizer state must agree. Where the forward
   has no collective, both also match a single-process reference: the mean of the two batches' losses.
2. HizooLightningModule under Lightning's DDP strategy (which uses the launched processes, as under torchrun):
     A: expert_parallel_size=2, 3 steps, checkpoint        B: expert_parallel_size=1, 3 steps, checkpoint
     C: resume A (EP=2) with EP=1 to step 5                D: resume B (EP=1) with EP=2 to step 5
   A = B (losses), C = D (losses of steps 4-5: the optimizer moments moved across sizes too), and D's export
   (``save_pretrained`` of the state gathered to rank 0) loads with ``from_pretrained`` and gives the logits of
   D's last checkpoint and of C's model.
"""

import copy
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.analysis.callback import DiagnosticsCallback
from hizoo.models.expert_parallel import ExpertParallel
from hizoo.models.lightning import HizooLightningModule, load_model_from_checkpoint
from hizoo.models.moe import update_router_states

TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            ffn="moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, experts_backend="grouped_mm")
CASES = {
    "topk": dict(router="topk"),
    "topk_global_balance": dict(router="topk", router_global_balance=True),
    "group_limited": dict(router="group_limited", n_groups=4, topk_groups=2, seq_aux_loss_coef=1e-2),
    "himoe": dict(router="himoe", n_groups=2, residual="mhc", n_streams=2),
    "himoe_recompute": dict(router="himoe", n_groups=2, checkpointing=True),  # all-to-all again in backward
}
TOL = dict(atol=1e-6, rtol=1e-4)
STEP_TOL = dict(atol=1e-5, rtol=1e-4)  # after an AdamW step: g/sqrt(v) magnifies float noise of near-zero gradients


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 64, (3, 10), generator=g) for _ in range(dist.get_world_size())]  # rank r trains on [r]


def train_step(model: HizooForCausalLM, ep_size: int, max_norm: float):
    """One DDP step on this rank's batch: loss, full gradients (experts gathered), total grad norm, the
    optimizer state after one AdamW step and its full (checkpointed) form, router states."""
    rank = dist.get_rank()
    ep = ExpertParallel(model, ep_size) if ep_size > 1 else None
    if ep is not None:
        ignored = [n for n, _ in ep.named_parameters()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    ddp = DistributedDataParallel(model)
    ids = batches()[rank]
    out = ddp(ids, labels=ids)
    out.loss.backward()
    if ep is not None:
        ep.reduce_gradients()
        total = ep.clip_grad_norm_(model.parameters(), max_norm)
    else:
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    grads = {n: full(ep, n, p.grad) for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    optimizer.step()
    update_router_states(model)
    checkpoint = {"state_dict": dict(model.state_dict()), "optimizer_states": [optimizer.state_dict()]}
    if ep is not None:
        ep.gather_checkpoint(checkpoint, [optimizer], prefix="")
    return dict(loss=out.loss.detach(), grads=grads, norm=total, checkpoint=checkpoint, ep=ep, optimizer=optimizer,
                model=model)


def full(ep, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor of the full model: sharded expert tensors gathered over the expert-parallel group."""
    if ep is None or name not in dict(ep.named_parameters()):
        return tensor.detach().clone()
    from hizoo.kernels.experts import gather_experts

    return gather_experts(tensor.detach(), ep.ep_group)


def reference(model: HizooForCausalLM) -> tuple[list[torch.Tensor], dict]:
    """No collective: each batch on its own copy of the full model (router state as at the start), the
    gradient of the mean of the two losses."""
    losses, grads = [], {}
    for ids in batches():
        copy_ = copy.deepcopy(model)
        loss = copy_(ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
        for n, p in copy_.named_parameters():
            g = p.grad / len(batches()) if p.grad is not None else torch.zeros_like(p)
            grads[n] = grads[n] + g if n in grads else g
    return losses, grads


def check_case(name: str, overrides: dict) -> None:
    rank = dist.get_rank()
    torch.manual_seed(0)
    overrides = dict(overrides)
    checkpointing = overrides.pop("checkpointing", False)
    model = HizooForCausalLM(HizooConfig(**{**TINY, **overrides}))
    if checkpointing:
        model.gradient_checkpointing_enable()
    with torch.no_grad():  # larger than the default init: decisive routing, experts that weigh in the loss
        for name_, p in model.named_parameters():
            if "router.weight" in name_ or ".experts." in name_:
                p.normal_(0, 0.5)
    ref_losses, ref_grads = reference(model) if not overrides.get("router_global_balance") else (None, None)
    max_norm = 0.05  # below the gradient norm: clipping acts, so its norm must count every expert once
    one = train_step(copy.deepcopy(model), 1, max_norm)
    two = train_step(copy.deepcopy(model), 2, max_norm)

    torch.testing.assert_close(two["loss"], one["loss"], **TOL)
    torch.testing.assert_close(two["norm"], one["norm"], **TOL)
    assert one["norm"] > max_norm
    for n, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][n], g, **TOL, msg=lambda m: f"{name} grad {n}: {m}")
    if ref_losses is not None:
        torch.testing.assert_close(two["loss"], ref_losses[rank], **TOL)
        clip = max_norm / one["norm"]
        for n, g in ref_grads.items():
            torch.testing.assert_close(two["grads"][n], g * clip, **TOL, msg=lambda m: f"{name} ref grad {n}: {m}")
    # parameters and router states after one AdamW step; the checkpointed full state (rank 0) equals EP=1's
    for (n, p1), (_, p2) in zip(one["model"].named_parameters(), two["model"].named_parameters()):
        torch.testing.assert_close(full(two["ep"], n, p2), p1.detach(), **STEP_TOL)
    for (n, b1), (_, b2) in zip(one["model"].named_buffers(), two["model"].named_buffers()):
        torch.testing.assert_close(b2, b1, **STEP_TOL, msg=lambda m: f"{name} buffer {n}: {m}")
    if rank == 0:
        for key, value in one["checkpoint"]["state_dict"].items():
            torch.testing.assert_close(two["checkpoint"]["state_dict"][key], value, **STEP_TOL)
        s1, s2 = one["checkpoint"]["optimizer_states"][0]["state"], two["checkpoint"]["optimizer_states"][0]["state"]
        assert s1.keys() == s2.keys()
        for index in s1:
            for key in s1[index]:
                torch.testing.assert_close(s2[index][key], s1[index][key], **STEP_TOL)
    # the full optimizer state (as written by rank 0) loads into the sharded optimizer as this rank's block
    full_state = [one["checkpoint"]["optimizer_states"][0]]
    dist.broadcast_object_list(full_state, src=0)
    optimizer = two["optimizer"]
    optimizer.register_load_state_dict_pre_hook(two["ep"].slice_optimizer_state)
    before = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in two["model"].parameters()}
    for p in two["model"].parameters():
        optimizer.state[p]["exp_avg"].zero_()
    optimizer.load_state_dict(full_state[0])
    for p in two["model"].parameters():
        for k, v in optimizer.state[p].items():
            torch.testing.assert_close(v, before[id(p)][k], **TOL)
    print(f"ok {name}", flush=True)


# ---------------------------------------------------------------------------------------------- Lightning
MODEL = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             ffn="moe", router="himoe", num_experts=8, n_groups=2, num_experts_per_tok=2, moe_intermediate_size=8,
             residual="mhc", n_streams=2, experts_backend="grouped_mm")
FIT_TOL = dict(atol=1e-5, rtol=1e-5)


class Losses(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))  # this rank's loss


def data() -> DataLoader:
    ids = torch.randint(0, 64, (96, 12), generator=torch.Generator().manual_seed(3))
    return DataLoader([{"input_ids": row} for row in ids], batch_size=2)  # Lightning shards it over the ranks


def fit(workdir: Path, ep_size: int, max_steps: int, ckpt_path: Path | None = None, diagnostics: bool = False):
    """Two micro-batches per optimizer step (DDP's no_sync, one expert-gradient reduction per step)."""
    L.seed_everything(0, verbose=False)
    module = HizooLightningModule(model_config=MODEL, lr=1e-2, warmup_steps=2, expert_parallel_size=ep_size)
    losses = Losses()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=workdir, save_last=True, every_n_train_steps=1)
    callbacks = [losses, checkpoint]
    if diagnostics:  # its extra forwards (with stream ablations) run on every rank: the all-to-alls must pair up
        callbacks.append(DiagnosticsCallback(scalars_every_n_steps=2, figures_every_n_steps=2))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=max_steps, logger=False,
                        callbacks=callbacks, gradient_clip_val=0.5, accumulate_grad_batches=2,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=data(), ckpt_path=ckpt_path)
    return module, torch.tensor(losses.values)


def check_lightning(scratch: Path) -> None:
    a_module, a = fit(scratch / "A", 2, 3, diagnostics=True)
    assert a_module.model.model.layers[0].ffn.experts.w13.shape[0] == 4  # 8 experts, 4 on each rank
    _, b = fit(scratch / "B", 1, 3)
    torch.testing.assert_close(a, b, **FIT_TOL)
    print("ok ep2_equals_ep1", flush=True)

    c_module, c = fit(scratch / "C", 1, 5, scratch / "A" / "last.ckpt")
    d_module, d = fit(scratch / "D", 2, 5, scratch / "B" / "last.ckpt")
    assert len(c) == len(d) == 4  # steps 4 and 5, two micro-batches each
    torch.testing.assert_close(d, c, **FIT_TOL)
    print("ok resume_across_sizes", flush=True)

    state = d_module.model_state_for_export()  # collective: gathers the experts to rank 0
    if dist.get_rank() == 0:
        export = scratch / "export"
        d_module.model.save_pretrained(export, state_dict=state)
        exported = HizooForCausalLM.from_pretrained(export).eval()
        from_checkpoint = load_model_from_checkpoint(scratch / "D" / "last.ckpt").eval()
        reference = c_module.model.eval()  # EP=1: every expert on every rank
        ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            logits = exported(ids).logits
            torch.testing.assert_close(logits, from_checkpoint(ids).logits, atol=0, rtol=0)
            torch.testing.assert_close(logits, reference(ids).logits, **FIT_TOL)
        print("ok export", flush=True)


def main(scratch: Path) -> None:
    dist.init_process_group("gloo")  # Lightning's DDP strategy finds it initialized and uses it
    for name, overrides in CASES.items():
        check_case(name, overrides)
    check_lightning(scratch)
    dist.barrier()
    dist.destroy_process_group()  # a live gloo group can abort the interpreter at exit


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]))
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
