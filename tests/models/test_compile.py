"""torch.compile on CPU in fp32, for every router and residual kind: the compiled model's loss, gradients and router
state (Hi-MoE's logit EMA, the loss-free balancing loads) equal the eager model's.

The grouped experts run through the custom op `hizoo::grouped_mm` while compiling (kernels/grouped_mm_op.py), because
torch's shape function for grouped_mm accepts bf16 only; its registration is checked by torch's own opcheck.
Compiling is slow on 2 CPU cores: the kinds are paired so that five one-layer models cover the three routers and the
five residual forms with dynamo + AOTAutograd (`aot_eager`, which traces forward and backward exactly as inductor
receives them), and the quickstart's architecture (Hi-MoE + mHC) also runs through inductor itself."""

import copy

import pytest
import torch
import torch.nn.functional as F

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.kernels.grouped_mm_op import _grouped_mm_op, grouped_mm

BASE = dict(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, ffn="moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
            experts_backend="grouped_mm")
KINDS = {
    "topk+none": dict(router="topk"),
    "group_limited+hc_static": dict(router="group_limited", n_groups=4, topk_groups=2, residual="hc", n_streams=2,
                                    hc_dynamic=False, seq_aux_loss_coef=1e-3),
    "himoe+hc_dynamic": dict(router="himoe", n_groups=4, num_experts_per_tok=4, residual="hc", n_streams=2,
                             hc_dynamic=True),
    "topk+mhc_lite": dict(router="topk", residual="mhc_lite", n_streams=3, router_global_balance=True),
    "himoe+mhc": dict(router="himoe", n_groups=4, num_experts_per_tok=4, residual="mhc", n_streams=2,
                      stream_init="lss"),
}


def _sorted_rows(E=4, d=8, f=12, N=10, dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(N, d, dtype=dtype, requires_grad=True)
    w = torch.randn(E, d, f, dtype=dtype, requires_grad=True)
    offs = torch.tensor([2, 5, 5, N], dtype=torch.int32)  # one empty group
    return x, w, offs


def test_the_grouped_mm_op_is_torchs_kernel_forward_and_backward():
    x, w, offs = _sorted_rows()
    grad = torch.randn(10, 12)
    ref = F.grouped_mm(x, w, offs=offs)
    ref_dx, ref_dw = torch.autograd.grad(ref, (x, w), grad)
    got = _grouped_mm_op(x, w, offs)
    dx, dw = torch.autograd.grad(got, (x, w), grad)
    assert torch.equal(got, ref) and torch.equal(dx, ref_dx) and torch.equal(dw, ref_dw)  # bit for bit
    torch.library.opcheck(_grouped_mm_op, (x, w, offs))  # fake tensor, schema and autograd registrations


def test_grouped_mm_compiles_in_fp32():
    x, w, offs = _sorted_rows()
    compiled = torch.compile(grouped_mm, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w, offs), F.grouped_mm(x, w, offs=offs))


def _compare(config: dict, backend: str, steps: int = 2) -> None:
    torch.manual_seed(0)
    eager = HizooForCausalLM(HizooConfig(**config)).train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend=backend)
    for step in range(steps):
        ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(step))
        ref = eager(ids, labels=ids)
        got = compiled(ids, labels=ids)
        ref.loss.backward()
        got.loss.backward()
        torch.testing.assert_close(got.loss, ref.loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), model.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    for (name, b), c in zip(eager.named_buffers(), model.buffers()):  # router state moved the same way
        torch.testing.assert_close(c, b, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow  # 5-30 s each: dynamo and AOTAutograd trace the forward and the backward
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_compiled_forward_and_backward_equal_eager(kind):
    _compare({**BASE, **KINDS[kind]}, backend="aot_eager")


@pytest.mark.slow  # 1-2 min: inductor generates and builds C++ kernels for the forward and the backward
def test_inductor_compiles_the_quickstart_architecture():
    _compare({**BASE, **KINDS["himoe+mhc"]}, backend="inductor")
