"""``torch.nn.functional.grouped_mm`` as an opaque custom op, so ``torch.compile`` accepts it in every dtype.

Why: torch's eager grouped_mm kernel computes fp32 (and fp16) on CPU, but its meta function, which
``torch.compile`` runs to trace shapes, accepts bf16 only ("Expected inputs of BF16 type"), so the default
fp32 model did not compile. Registered as ``hizoo::grouped_mm`` with its own shape function, the op is a
black box to dynamo and inductor: the compiled graph calls torch's eager kernel, forward and backward, so the
numbers are bit-for-bit those of the uncompiled model (the backward is the same pair of grouped GEMMs torch's
autograd runs: dX = dY Wᵀ per expert and dW_e = X_eᵀ dY_e, the 2-D x 2-D form of grouped_mm with offsets).

``grouped_mm(x, w, offs)`` picks the op only while compiling in a dtype other than bf16; otherwise it is
``F.grouped_mm`` itself (eager runs, and bf16 graphs where inductor has its own lowering).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.library.custom_op("hizoo::grouped_mm", mutates_args=())
def _grouped_mm_op(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """x [N, d] rows sorted by group, w [E, d, f], offs [E] int32 exclusive group ends -> [N, f]."""
    return F.grouped_mm(x, w, offs=offs)


@_grouped_mm_op.register_fake
def _(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], w.shape[2])


@torch.library.custom_op("hizoo::grouped_mm_backward", mutates_args=())
def _grouped_mm_backward_op(grad: Tensor, x: Tensor, w: Tensor, offs: Tensor) -> tuple[Tensor, Tensor]:
    """grad [N, f] -> (dx [N, d] = grad · w_eᵀ per group, dw [E, d, f] = x_eᵀ · grad_e per group)."""
    grad_x = F.grouped_mm(grad, w.transpose(-2, -1), offs=offs)
    grad_w = F.grouped_mm(x.t(), grad, offs=offs)  # 2-D x 2-D with offsets: one [d, f] product per group
    return grad_x, grad_w


@_grouped_mm_backward_op.register_fake
def _(grad: Tensor, x: Tensor, w: Tensor, offs: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(w)


def _setup_context(ctx, inputs, output) -> None:
    x, w, offs = inputs
    ctx.save_for_backward(x, w, offs)


def _backward(ctx, grad: Tensor):
    x, w, offs = ctx.saved_tensors
    grad_x, grad_w = _grouped_mm_backward_op(grad.contiguous(), x, w, offs)
    return grad_x, grad_w, None


_grouped_mm_op.register_autograd(_backward, setup_context=_setup_context)


def grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """``F.grouped_mm(x, w, offs=offs)``, through the opaque op while ``torch.compile`` traces a non-bf16 call."""
    if torch.compiler.is_compiling() and w.dtype != torch.bfloat16:
        return _grouped_mm_op(x, w, offs)
    return F.grouped_mm(x, w, offs=offs)
