"""Expert parallelism in training: the process mesh, sharding every MoE layer's experts, the experts' gradient
reduction and clipping, and checkpoints that hold every expert whatever the expert-parallel size.

Layout (torchtitan's, and Megatron's "expert data parallel"): the W processes of a data-parallel run form a
DeviceMesh [W/N, N] with dims ``("expert_data_parallel", "expert_parallel")``. Every rank trains on its own
batch (data parallelism over all W ranks, Lightning's DDP); attention, norms, routers and shared experts are
replicated and averaged by DDP as without EP; the routed experts of each MoE layer are split over the N ranks of
an ``expert_parallel`` group (consecutive ranks: one node when N <= GPUs per node, where the all-to-all is
fastest) and replicated over the W/N such groups. Routers see their rank's tokens, as under plain DDP, so their
losses and statistics (global-batch counts, loss-free bias loads: all-reduced over all W ranks) are unchanged.

Gradients of an expert: the reverse all-to-all already sums over the N ranks of its group the gradient of each
rank's loss; an all-reduce over ``expert_data_parallel`` adds the replicas; dividing by W gives the average of
the W ranks' losses, which is what DDP computes for the replicated parameters. DDP ignores the expert weights
(DistributedDataParallel's documented ``_set_params_and_buffers_to_ignore_for_model``) and ``reduce_gradients``
runs once per optimizer step, after gradient accumulation and before clipping, whose norm counts every expert
once (``clip_grad_norm_``).

Checkpoints hold full [E, ...] expert weights and optimizer states: ``gather_checkpoint`` gathers them to global
rank 0 (on CPU, one tensor at a time: no rank ever holds all experts on its accelerator), and loading slices
each rank's block (``GroupedExperts._load_from_state_dict``, ``slice_optimizer_state``). A checkpoint is thus the
same file at every EP size: train with EP=2, resume with EP=1 or 4, analyse or export it like any other.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..kernels.experts import GroupedExperts, gather_experts

MESH_DIMS = ("expert_data_parallel", "expert_parallel")


class ExpertParallel:
    """Shards the experts of ``model`` over ``expert_parallel_size`` ranks (collective: call on every rank, after
    ``torch.distributed`` is initialized and before an optimizer or DDP wrapper is built)."""

    def __init__(self, model: nn.Module, expert_parallel_size: int, device_type: str = "cpu"):
        N = expert_parallel_size
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"expert_parallel_size={N} needs several processes with torch.distributed initialized "
                               f"(e.g. Lightning's strategy 'ddp' with devices >= {N})")
        W = dist.get_world_size()
        if W % N:
            raise ValueError(f"expert_parallel_size={N} must divide the number of processes ({W})")
        self.experts = {name: m for name, m in model.named_modules() if isinstance(m, GroupedExperts)}
        if not self.experts:
            raise ValueError(f"expert_parallel_size={N} needs a Mixture-of-Experts model (ffn='moe'); this one has "
                             f"no routed experts")
        for m in self.experts.values():
            if m.num_experts % N:
                raise ValueError(f"expert_parallel_size={N} must divide num_experts={m.num_experts}")
        self.size, self.world_size = N, W
        self.mesh = torch.distributed.device_mesh.init_device_mesh(device_type, (W // N, N), mesh_dim_names=MESH_DIMS)
        self.ep_group = self.mesh["expert_parallel"].get_group()
        self.edp_group = self.mesh["expert_data_parallel"].get_group()
        for m in self.experts.values():
            m.shard_(self.ep_group)

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The sharded expert weights, named as in ``model.named_parameters()``."""
        return [(f"{name}.{p_name}", p) for name, m in self.experts.items() for p_name, p in m.named_parameters()]

    # ------------------------------------------------------------------ gradients
    @torch.no_grad()
    def reduce_gradients(self) -> None:
        """Expert gradients -> average over the W ranks' losses (see the module docstring). Once per optimizer
        step, before clipping and ``optimizer.step()``; a missing gradient counts as zero on every rank."""
        grads = []
        for _, p in self.named_parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if dist.get_world_size(self.edp_group) > 1:
            flat = torch.cat([g.flatten() for g in grads])  # one all-reduce for every layer
            dist.all_reduce(flat, group=self.edp_group)
            for g, reduced in zip(grads, torch.split(flat, [g.numel() for g in grads])):
                g.copy_(reduced.view_as(g))
        for g in grads:
            g.div_(self.world_size)

    @torch.no_grad()
    def clip_grad_norm_(self, parameters, max_norm: float) -> Tensor:
        """``torch.nn.utils.clip_grad_norm_`` (2-norm) over the whole model: replicated gradients counted once,
        each expert's gradient once (a sum of squares over the expert-parallel group). Returns the total norm."""
        params = [p for p in parameters if p.grad is not None]
        sharded = {id(p) for _, p in self.named_parameters()}
        replicated = [p.grad for p in params if id(p) not in sharded]
        experts = [p.grad for p in params if id(p) in sharded]
        zero = params[0].grad.new_zeros((), dtype=torch.float32)
        replicated_sq = torch.nn.utils.get_total_norm(replicated).float().square() if replicated else zero
        experts_sq = torch.nn.utils.get_total_norm(experts).float().square() if experts else zero.clone()
        dist.all_reduce(experts_sq, group=self.ep_group)
        total = (replicated_sq + experts_sq).sqrt()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    # ------------------------------------------------------------------ checkpoints
    def _gather_to_rank0(self, local: Tensor) -> Tensor | None:
        """Full [E, ...] tensor on CPU on global rank 0; None elsewhere. Only the expert-parallel group of rank 0
        communicates (the replicas hold the same values)."""
        if self.mesh.get_local_rank("expert_data_parallel") != 0:
            return None
        return gather_experts(local.detach(), self.ep_group, dst=0, device="cpu")

    def gather_checkpoint(self, checkpoint: dict, optimizers, prefix: str = "model.") -> None:
        """Replace the sharded expert entries of a Lightning checkpoint (``state_dict``; ``optimizer_states`` of
        ``optimizers``, in order) by full tensors on global rank 0, the rank that writes it. Collective: every
        rank calls it, as Lightning calls ``on_save_checkpoint`` on every rank."""
        state = checkpoint["state_dict"]
        for name, p in self.named_parameters():
            full = self._gather_to_rank0(p)
            if full is not None:
                state[prefix + name] = full
        for optimizer, saved in zip(optimizers, checkpoint.get("optimizer_states", [])):
            index = {id(p): i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
            for _, p in self.named_parameters():
                entry = saved["state"].get(index.get(id(p)))
                if entry is None:
                    continue
                entry = dict(entry)  # the optimizer's own dict: never mutate it
                for key, value in entry.items():
                    if torch.is_tensor(value) and value.shape == p.shape:  # exp_avg, exp_avg_sq, ...
                        full = self._gather_to_rank0(value)
                        if full is not None:
                            entry[key] = full
                saved["state"][index[id(p)]] = entry

    def slice_optimizer_state(self, optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
        """``optimizer.register_load_state_dict_pre_hook``: full [E, ...] states of sharded expert weights -> this
        rank's block (states already of the local shape pass unchanged)."""
        sharded = {id(p): m for m in self.experts.values() for p in (m.w13, m.w2)}
        state = dict(state_dict["state"])
        for saved_group, group in zip(state_dict["param_groups"], optimizer.param_groups):
            for index, p in zip(saved_group["params"], group["params"]):
                module = sharded.get(id(p))
                if module is None or index not in state:
                    continue
                E, r = module.num_experts, dist.get_rank(self.ep_group)
                E_local = E // self.size
                state[index] = {
                    key: value[r * E_local:(r + 1) * E_local].clone()
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == E
                    and value.shape[1:] == p.shape[1:] and p.shape[0] != E else value
                    for key, value in state[index].items()}
        return {**state_dict, "state": state}

    def full_state_dict(self, model: nn.Module) -> dict[str, Tensor] | None:
        """``model.state_dict()`` with every expert, on CPU, on global rank 0 (None elsewhere), e.g. for
        ``save_pretrained(state_dict=...)``. Collective: every rank calls it."""
        full = {name: self._gather_to_rank0(p) for name, p in self.named_parameters()}
        if dist.get_rank() != 0:
            return None
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        state.update(full)
        return state


def expert_parallel_for_lightning(module, expert_parallel_size: int) -> ExpertParallel:
    """Shard ``module.model``'s experts inside ``LightningModule.configure_model`` under Lightning's DDP
    strategies (``ddp``, ``ddp_spawn``, ...; CPU/gloo and GPU/NCCL, one or several nodes), and have DDP leave the
    expert weights to ``ExpertParallel`` (DDP wraps the module after ``configure_model``)."""
    from lightning.pytorch.strategies import DDPStrategy

    if module._trainer is None:
        raise RuntimeError(f"expert_parallel_size={expert_parallel_size}: configure_model shards the experts under "
                           f"a Trainer (strategy 'ddp'); this module is not attached to one")
    strategy = module.trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        raise ValueError(f"expert_parallel_size={expert_parallel_size} runs under Lightning's DDP strategies "
                         f"(trainer.strategy 'ddp', 'ddp_spawn', 'ddp_find_unused_parameters_true', ...); got "
                         f"{type(strategy).__name__}")
    ep = ExpertParallel(module.model, expert_parallel_size, device_type=strategy.root_device.type)
    prefix = next(name for name, child in module.named_children() if child is module.model)
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        module, [f"{prefix}.{name}" for name, _ in ep.named_parameters()])
    return ep
