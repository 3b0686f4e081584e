"""models/stream_connection.py: the read/write every connection shares (against einsum and finite differences),
the connection index, the plain residual, the recompute option and the base class."""

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.hyper_connections import residual_streams
from hizoo.models.stream_connection import (PlainResidual, ResidualStreams, connection_index, read_streams,
                                            write_streams)

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def _model(seed=0, **overrides) -> HizooForCausalLM:
    torch.manual_seed(seed)
    return HizooForCausalLM(HizooConfig(**{**TINY, **overrides})).eval()


def _ids(seed=1, shape=(2, 9)):
    return torch.randint(0, TINY["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- read and write


@pytest.mark.parametrize("shared", [False, True])
def test_stream_mixing_gradients(shared):
    """The hand-written backward of read/write against finite differences, per-token and shared weights."""
    g = torch.Generator().manual_seed(0)
    H = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g).requires_grad_()
    F = torch.randn(2, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    lead = () if shared else (2, 3)
    r, w = (torch.randn(*lead, 4, dtype=torch.float64, generator=g).requires_grad_() for _ in range(2))
    M = torch.randn(*lead, 4, 4, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(read_streams, (H, r))
    assert torch.autograd.gradcheck(write_streams, (H, F, M, w))
    tok = "" if shared else "bs"
    torch.testing.assert_close(read_streams(H, r), torch.einsum(f"{tok}i,bsid->bsd", r, H))
    torch.testing.assert_close(write_streams(H, F, M, w),
                               torch.einsum(f"{tok}ij,bsid->bsjd", M, H) + w[..., None] * F[..., None, :])



# ---------------------------------------------------------------------------------------------- connections


def test_connection_index_counts_both_branches():
    assert [connection_index(i, b) for i in range(3) for b in ("attn", "ffn")] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="branch='mlp'"):
        connection_index(0, "mlp")


def test_plain_residual_reads_the_stream_and_adds_the_branch_output():
    conn = residual_streams(HizooConfig(**TINY), layer_idx=0, branch="attn")
    assert type(conn) is PlainResidual and not list(conn.parameters()) and conn.reference_decayed == ()
    H = torch.randn(2, 3, 1, 32)
    h, ctx = conn.read(H)
    assert torch.equal(h, H[..., 0, :]) and ctx == {}
    F = torch.randn(2, 3, 32)
    assert torch.equal(conn.write(H, F, ctx), H + F[..., None, :])


def test_the_base_class_is_not_a_connection():
    with pytest.raises(TypeError, match="residual_streams"):
        ResidualStreams(HizooConfig(**TINY, residual="hc", n_streams=2), 0, "attn")


@pytest.mark.parametrize("residual", ["hc", "mhc"])
def test_recompute_gives_the_same_gradients(residual):
    ids = _ids()
    grads = []
    for recompute in (False, True):
        model = _model(residual=residual, n_streams=4, hc_dynamic=True, stream_init="lss",
                       hc_recompute=recompute).train()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "_conn." in name:
                    p.add_(torch.randn_like(p) * 0.1)
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)
