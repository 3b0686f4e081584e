"""GroupedExperts: E SwiGLU experts stored as stacked weights, computed by a selectable backend, optionally
sharded over an expert-parallel process group (``shard_``; see ``kernels/expert_parallel.py``)."""

from __future__ import annotations

import functools
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .eager import eager_experts
from .expert_parallel import expert_parallel_experts

BACKENDS = ("auto", "triton", "grouped_mm", "eager")  # the allowed values of HizooConfig.experts_backend


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it is not on macOS and some CPU installs; an exported model must load there)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` means Triton on CUDA and grouped_mm elsewhere. Without Triton installed, ``triton`` and ``auto``
    run grouped_mm (the same SwiGLU experts; ``triton`` warns)."""
    if backend not in BACKENDS:
        raise ValueError(f"experts backend={backend!r} is not allowed; choose one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "grouped_mm"
    if backend == "triton" and not triton_available():
        _warn_triton_missing()
        return "grouped_mm"
    return backend


@functools.cache
def _warn_triton_missing() -> None:  # once per process
    warnings.warn("experts_backend='triton' but Triton is not installed: the experts run on grouped_mm", stacklevel=4)


class GroupedExperts(nn.Module):
    """SwiGLU experts with weights ``w13`` [E, d, 2f] (gate and up fused) and ``w2`` [E, f, d].

    forward(x [T, d], expert_idx [T, K], expert_weight [T, K]) -> [T, d]

    Expert parallelism: after ``shard_(group)`` the module holds only its rank's E/N experts (rows
    [r·E/N, (r+1)·E/N) of both weights, r the rank in ``group``) and ``forward`` sends each (token, expert) pair
    to the rank that holds the expert and back (``expert_parallel_experts``); ``expert_idx`` stays global.
    ``unshard_()`` gathers the full weights back. ``num_experts`` is always the global E.
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, backend: str = "auto"):
        super().__init__()
        resolve_backend(backend, torch.device("cpu"))  # validate the name early
        self.num_experts = num_experts
        self.intermediate_size = intermediate_size
        self.backend = backend
        self.ep_group = None  # expert-parallel process group after shard_(); None: every expert is local
        self.w13 = nn.Parameter(torch.empty(num_experts, hidden_size, 2 * intermediate_size))
        self.w2 = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))

    @property
    def expert_parallel_size(self) -> int:
        return 1 if self.ep_group is None else dist.get_world_size(self.ep_group)

    @torch.no_grad()
    def shard_(self, group) -> None:
        """Keep only this rank's E/N experts. The full weights are first broadcast from global rank 0, so every
        rank cuts its block out of the same tensors whatever its own initialization drew."""
        if self.ep_group is not None:
            raise RuntimeError("GroupedExperts is already sharded; call unshard_() first")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("GroupedExperts.shard_ needs torch.distributed initialized (init_process_group)")
        N, r = dist.get_world_size(group), dist.get_rank(group)
        if self.num_experts % N:
            raise ValueError(f"num_experts={self.num_experts} must be divisible by expert_parallel_size={N}")
        E_local = self.num_experts // N
        for name in ("w13", "w2"):
            weight = getattr(self, name).detach()
            full = weight.to(_comm_device(weight, None))
            dist.broadcast(full, src=0)  # default group: all ranks, also the replicas of other EP groups
            setattr(self, name, nn.Parameter(full[r * E_local:(r + 1) * E_local].to(weight.device, copy=True)))
        self.ep_group = group

    @torch.no_grad()
    def unshard_(self) -> None:
        """Gather every rank's experts back into full [E, ...] weights on every rank (collective over the group)."""
        if self.ep_group is None:
            return
        for name in ("w13", "w2"):
            setattr(self, name, nn.Parameter(gather_experts(getattr(self, name).detach(), self.ep_group)))
        self.ep_group = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A sharded module loads full [E, ...] weights (every checkpoint and export holds all experts) by taking
        its own block; loading a full state is therefore the same call at any expert-parallel size."""
        if self.ep_group is not None:
            N, r = self.expert_parallel_size, dist.get_rank(self.ep_group)
            for name in ("w13", "w2"):
                full = state_dict.get(prefix + name)
                if full is not None and full.shape[0] == self.num_experts:
                    E_local = self.num_experts // N
                    state_dict[prefix + name] = full[r * E_local:(r + 1) * E_local]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, expert_idx: Tensor, expert_weight: Tensor) -> Tensor:
        if self.ep_group is not None:
            return expert_parallel_experts(x, expert_idx, expert_weight, self.num_experts, self._local_experts,
                                           self.ep_group)
        return self._local_experts(x, expert_idx, expert_weight)

    def _local_experts(self, x: Tensor, expert_idx: Tensor, expert_weight: Tensor) -> Tensor:
        """The experts this module holds, indexed from 0, on the backend's kernels."""
        if x.shape[0] == 0:  # stays attached to the weights (expert parallelism: every rank runs the backward)
            return x.new_zeros(x.shape) + 0.0 * (x.sum() + self.w13.sum() + self.w2.sum() + expert_weight.sum())
        backend = resolve_backend(self.backend, x.device)
        if backend == "eager":
            return eager_experts(x, self.w13, self.w2, expert_idx, expert_weight)
        if backend == "grouped_mm":
            from .grouped_mm import grouped_mm_experts

            return grouped_mm_experts(x, self.w13, self.w2, expert_idx, expert_weight)
        from .triton_experts import triton_experts

        return triton_experts(x, self.w13, self.w2, expert_idx, expert_weight)

    def extra_repr(self) -> str:
        E_local, d, two_f = self.w13.shape
        ep = f", expert_parallel_size={self.expert_parallel_size}" if self.ep_group is not None else ""
        return (f"num_experts={self.num_experts}, hidden_size={d}, intermediate_size={two_f // 2}, "
                f"backend={self.backend!r}{ep}")


def gather_experts(local: Tensor, group, dst: int | None = None,
                   device: torch.device | str | None = None) -> Tensor | None:
    """Concatenate every rank's block of experts along dim 0: [E/N, ...] on each rank -> [E, ...].

    ``dst`` None: every rank gets the result (all-gather); else only group rank ``dst`` does (a gather; None
    elsewhere), so that no other rank holds the full tensor. The collective runs where the backend needs it
    (NCCL: the current CUDA device); the result goes to ``device`` (default: ``local``'s device).
    """
    comm_device = _comm_device(local, group)
    device = local.device if device is None else torch.device(device)
    send = local.to(comm_device).contiguous()
    N = dist.get_world_size(group)
    if dst is None:
        parts = [torch.empty_like(send) for _ in range(N)]
        dist.all_gather(parts, send, group=group)
    else:
        parts = [torch.empty_like(send) for _ in range(N)] if dist.get_rank(group) == dst else None
        dist.gather(send, parts, group_dst=dst, group=group)
        if parts is None:
            return None
    return torch.cat([part.to(device) for part in parts])


def _comm_device(tensor: Tensor, group) -> torch.device:
    """Where a collective on ``tensor`` must run: NCCL needs CUDA tensors, gloo takes any."""
    if dist.get_backend(group) == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device
