"""Grouped-expert compute: eager reference, torch grouped_mm, Triton kernels, and the dispatching module."""

from .eager import eager_experts
from .experts import BACKENDS, GroupedExperts, resolve_backend

__all__ = ["BACKENDS", "GroupedExperts", "eager_experts", "resolve_backend"]
