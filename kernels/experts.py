"""GroupedExperts: E SwiGLU experts stored as stacked weights, computed by a selectable backend."""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor, nn

from .eager import eager_experts

BACKENDS = ("auto", "triton", "grouped_mm", "eager")


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
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, backend: str = "auto"):
        super().__init__()
        resolve_backend(backend, torch.device("cpu"))  # validate the name early
        self.num_experts = num_experts
        self.intermediate_size = intermediate_size
        self.backend = backend
        self.w13 = nn.Parameter(torch.empty(num_experts, hidden_size, 2 * intermediate_size))
        self.w2 = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))

    def forward(self, x: Tensor, expert_idx: Tensor, expert_weight: Tensor) -> Tensor:
        backend = resolve_backend(self.backend, x.device)
        if backend == "eager":
            return eager_experts(x, self.w13, self.w2, expert_idx, expert_weight)
        if backend == "grouped_mm":
            from .grouped_mm import grouped_mm_experts

            return grouped_mm_experts(x, self.w13, self.w2, expert_idx, expert_weight)
        from .triton_experts import triton_experts

        return triton_experts(x, self.w13, self.w2, expert_idx, expert_weight)

    def extra_repr(self) -> str:
        E, d, two_f = self.w13.shape
        return f"num_experts={E}, hidden_size={d}, intermediate_size={two_f // 2}, backend={self.backend!r}"
